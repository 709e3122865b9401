"""Skip-layer guidance where it is defined: on full large steps it is diffusers' (compared with
StableDiffusion3Pipeline itself); a step inside its window that is not a full large step is refused in one line."""

import pytest
import torch

from stitchkit import ConfigError

ARGS = dict(prompt=["a red circle", "a blue square"], height=64, width=64, num_inference_steps=10,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent", skip_guidance_layers=[1],
            skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.5)
HYBRID = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}  # hybrid from step 2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_on_full_large_steps_it_equals_diffusers_pipeline(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen(0)).images
    without = large(**{**ARGS, "skip_guidance_layers": None}, generator=_gen(0)).images
    assert (expected - without).abs().max() > 1e-3  # the term does something on these steps
    out = stitch_pipe(**ARGS, generator=_gen(0), switch="large")
    assert (out.images - expected).abs().max() <= 1e-5


def test_a_hybrid_method_whose_window_holds_only_large_steps_runs_it(stitch_pipe):
    args = {**ARGS, "skip_layer_guidance_stop": 0.2}  # window: step 1 only (1 > 0.1 and 1 < 2)
    out = stitch_pipe(**args, generator=_gen(1), switch=HYBRID, allow_unprofitable=True)
    plain = stitch_pipe(**{**args, "skip_guidance_layers": None}, generator=_gen(1), switch=HYBRID,
                        allow_unprofitable=True)
    assert [r.stage for r in out.trace][:3] == [0, 0, 1]
    assert (out.images - plain.images).abs().max() > 1e-3


@pytest.mark.parametrize("switch, step", [(HYBRID, 2), ("t-stitch", 1)])
def test_a_step_in_the_window_that_is_not_full_large_is_refused_in_one_line(stitch_pipe, switch, step):
    with pytest.raises(ConfigError) as err:
        stitch_pipe(**ARGS, generator=_gen(2), switch=switch, allow_unprofitable=True)
    message = str(err.value)
    assert message.startswith(f"skip_guidance_layers: step {step} of ") and "not a full large-model step" in message
    assert "\n" not in message


def test_a_layer_the_large_model_lacks_is_refused(stitch_pipe):
    layers = len(stitch_pipe.transformer.transformer_blocks)
    with pytest.raises(ConfigError, match=rf"^skip_guidance_layers: {layers} is not a layer of the large model; "
                                          rf"give block indices in \[0, {layers}\)$"):
        stitch_pipe(**{**ARGS, "skip_guidance_layers": [layers]}, switch="large")
