"""StitchPipeline speaks diffusers: every StableDiffusion3Pipeline.__call__ argument is honoured or refused
with one line, the output behaves like diffusers', and the usual pipeline attributes exist."""

import inspect

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from stitchkit import ConfigError, StitchPipeline
from stitchkit.pipeline.conventions import DIFFUSERS_DEFAULT_EXCEPTIONS, REFUSED_ARGUMENTS

ARGS = dict(prompt=["a red circle", "a blue square"], height=64, width=64, num_inference_steps=4,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_signature_has_every_diffusers_argument_in_order_with_its_default():
    """A diffusers upgrade that adds an argument fails here until it is honoured or refused."""
    theirs = [p for p in inspect.signature(StableDiffusion3Pipeline.__call__).parameters.values()
              if p.name != "self"]
    ours = inspect.signature(StitchPipeline.__call__).parameters
    names = [n for n in ours if n != "self"]
    assert names[:len(theirs)] == [p.name for p in theirs]  # positional calls mean the same thing
    for p in theirs:
        if p.name in DIFFUSERS_DEFAULT_EXCEPTIONS:
            continue
        assert ours[p.name].default == p.default, p.name
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names[len(theirs):])


def test_callback_on_step_end_replaces_latents_as_in_diffusers(tiny_pair, stitch_pipe):
    large, _ = tiny_pair

    def make(seen):
        def on_step_end(pipe, i, t, kwargs):
            seen.append((i, float(t), sorted(kwargs), pipe.num_timesteps))
            if i == 1:
                return {"latents": kwargs["latents"] * 0.5, "prompt_embeds": kwargs["prompt_embeds"] * 0.9}
            return {}
        return on_step_end

    theirs, ours = [], []
    inputs = ["latents", "prompt_embeds"]
    expected = large(**ARGS, generator=_gen(), callback_on_step_end=make(theirs),
                     callback_on_step_end_tensor_inputs=inputs).images
    out = stitch_pipe(**ARGS, generator=_gen(), switch="large", callback_on_step_end=make(ours),
                      callback_on_step_end_tensor_inputs=inputs)
    plain = stitch_pipe(**ARGS, generator=_gen(), switch="large")
    assert ours == theirs and len(ours) == 4
    assert (out.images - expected).abs().max() <= 1e-5
    assert (plain.images - expected).abs().max() > 1e-2  # the replacement mattered


def test_callback_on_step_end_runs_in_stitched_steps_beside_stitchkits_callback(stitch_pipe):
    order = []
    stitch_pipe(**ARGS, generator=_gen(), switch="hybridstitch-30", allow_unprofitable=True,
                callback=lambda step: order.append(("record", step["step"])),
                callback_on_step_end=lambda pipe, i, t, kw: order.append(("diffusers", i)) or {})
    assert order == [(kind, i) for i in range(4) for kind in ("record", "diffusers")]


def test_unknown_callback_tensor_is_one_line(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^callback_on_step_end_tensor_inputs: 'noise' .*allowed: latents"):
        stitch_pipe(**ARGS, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])


def test_return_dict_false_and_subscripting_match_diffusers(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    theirs = large(**ARGS, generator=_gen(1), return_dict=False)
    ours = stitch_pipe(**ARGS, generator=_gen(1), return_dict=False)
    assert isinstance(ours, tuple) and len(ours) == len(theirs) == 1
    assert (ours[0] - theirs[0]).abs().max() <= 1e-5
    out = stitch_pipe(**ARGS, generator=_gen(1))
    assert out[0] is out.images and out["images"] is out.images and out[1] == out.trace


@pytest.mark.parametrize("name, value", [("ip_adapter_image_embeds", torch.zeros(1, 4)),
                                         ("ip_adapter_image", "an image")])
def test_unsupported_arguments_are_refused_in_one_line(stitch_pipe, name, value):
    with pytest.raises(ConfigError) as err:
        stitch_pipe(**ARGS, **{name: value})
    message = str(err.value)
    assert message.startswith(f"{name}: is not supported; ") and "\n" not in message
    assert REFUSED_ARGUMENTS[name] in message


def test_joint_attention_kwargs_scale_is_honoured_and_other_keys_refused(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen(2), joint_attention_kwargs={"scale": 0.7}).images
    out = stitch_pipe(**ARGS, generator=_gen(2), joint_attention_kwargs={"scale": 0.7})
    assert (out.images - expected).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match=r"^joint_attention_kwargs\.foo: is not supported"):
        stitch_pipe(**ARGS, joint_attention_kwargs={"foo": 1})


def test_skip_layer_settings_without_layers_are_ignored_as_in_diffusers(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen(3), skip_layer_guidance_scale=5.0).images
    out = stitch_pipe(**ARGS, generator=_gen(3), skip_layer_guidance_scale=5.0)
    assert (out.images - expected).abs().max() <= 1e-5


def test_pipeline_attributes(tiny_pair, stitch_pipe):
    large, small = tiny_pair
    assert stitch_pipe.device == large.device and stitch_pipe.dtype == large.dtype == torch.float32
    components = stitch_pipe.components
    assert components["small_transformer"] is small and components["vae"] is large.vae
    assert components["transformer"] is large.transformer
    stitch_pipe.set_progress_bar_config(disable=True)
    assert stitch_pipe._progress_bar_config == {"disable": True}


def test_set_progress_bar_config_turns_the_bar_on(stitch_pipe, capsys):
    stitch_pipe.set_progress_bar_config(disable=False)
    try:
        stitch_pipe(**ARGS)
    finally:
        stitch_pipe.set_progress_bar_config(disable=True)
    # tqdm draws "0/4" at once; later counts only after its 0.1 s refresh interval, which 4 tiny steps may
    # not reach, and leave=False clears the line at the end.
    err = capsys.readouterr().err
    assert "denoise:" in err and "/4 [" in err
    stitch_pipe(**ARGS)  # disabled again: no bar
    assert "denoise" not in capsys.readouterr().err


def test_check_pair_compares_dtype_and_device(tiny_pair):
    import copy

    large, small = tiny_pair
    half = copy.deepcopy(small).to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"^small\.dtype: is torch.bfloat16, the large model's is torch.float32"):
        StitchPipeline.from_pipelines(large=large, small=half)
    meta = copy.deepcopy(small).to("meta")
    with pytest.raises(ConfigError, match=r"^small\.device: is meta, the large model's is cpu"):
        StitchPipeline.from_pipelines(large=large, small=meta)


@pytest.fixture(scope="module")
def saved_pair(tiny_pair, tmp_path_factory):
    """The tiny pair saved in diffusers format (float32 weights), loaded back as hub folders would be."""
    large, small = tiny_pair
    root = tmp_path_factory.mktemp("saved")
    large.save_pretrained(root / "large")
    small.save_pretrained(root / "small" / "transformer")
    return root


def test_from_pretrained_torch_dtype_loads_every_component_in_it(saved_pair):
    pipe = StitchPipeline.from_pretrained(str(saved_pair / "large"), str(saved_pair / "small"),
                                          torch_dtype=torch.bfloat16, text_encoder_3=None, tokenizer_3=None,
                                          image_encoder=None, feature_extractor=None)
    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    assert {"transformer", "small_transformer", "vae", "text_encoder", "text_encoder_2"} <= set(modules)
    assert {k: {p.dtype for p in m.parameters()} for k, m in modules.items()} == {
        k: {torch.bfloat16} for k in modules}
    assert pipe.dtype == torch.bfloat16
    out = pipe("a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=8, output_type="np",
               switch="hybridstitch-30", allow_unprofitable=True)
    assert out.images.shape == (1, 64, 64, 3)
