"""End to end: a batch of 4 prompts gives each prompt what it gets alone (tiny-random and shapes pairs).

Per-sample switch steps must be equal exactly; images equal within float tolerance. Bitwise equality is
not expected: a batched call multiplies a (4·2·N)-row matrix where a batch of one multiplies a (2·N)-row
one, and the BLAS kernels block and sum those differently (float32 rounding differs in the last bits); a
mixed step also runs the large model on a subset of rows and reads its K/V cache through a gathered copy.
The thresholds are chosen so that the four prompts switch at different steps (the test checks that it
exercised mixed steps) and so that no D_t lies within float noise of a threshold.
"""

import pytest
import torch

from stitchkit.loop.trace import latency_calls, latency_steps
from stitchkit.cost.latency import Costs, predict_from_calls, predict_from_steps

TINY_PROMPTS = ["a red circle", "a blue square", "a green triangle on a white background", "two yellow stars"]
SHAPES_PROMPTS = ["a small red circle at the top left on a blue background",
                  "a large green square at the center on a white background",
                  "a small yellow triangle at the bottom right on a black background",
                  "a large blue ring at the top on a red background"]


def generators():
    return [torch.Generator().manual_seed(seed) for seed in range(4)]


def compare(pipe, prompts, *, atol, **kwargs):
    batch = pipe(prompts, generator=generators(), output_type="latent", **kwargs)
    alone = [pipe(prompt, generator=generators()[b], output_type="latent", **kwargs)
             for b, prompt in enumerate(prompts)]
    for b, one in enumerate(alone):
        stages = [r.stage for r in batch.traces[b]]
        assert stages == [r.stage for r in one.trace], f"sample {b}"
        assert [(r.large_tokens, r.small_tokens) for r in batch.traces[b]] == \
               [(r.large_tokens, r.small_tokens) for r in one.trace]
        assert (batch.images[b] - one.images[0]).abs().max() <= atol, f"sample {b}"
    assert any(step.mixed for step in batch.steps), "the thresholds gave every prompt the same stages"
    return batch, alone


def test_tiny_random_batch_of_four_equals_four_runs(stitch_pipe):
    switch = {"kind": "hybridstitch", "thresholds": [0.031, 0.025], "mask_ratios": [0.3]}
    batch, alone = compare(stitch_pipe, TINY_PROMPTS, atol=5e-5, switch=switch, height=128, width=128,
                           num_inference_steps=10, guidance_scale=4.0, max_sequence_length=8)
    # Prices: the batch's calls at batch 1 agree with the per-step model; a batch is the sum of its samples.
    costs = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.3, 4.5)])
    summed = sum(predict_from_steps(latency_steps(one.trace), costs).refined_predicted_ms for one in alone)
    priced = predict_from_calls(latency_calls(batch.steps), costs, batch=4)
    assert priced.refined_predicted_ms == pytest.approx(summed)
    one = predict_from_calls(latency_calls(alone[0].steps), costs, batch=1)
    assert one == predict_from_steps(latency_steps(alone[0].trace), costs)


def test_tiny_random_srdiffusion_batch_of_four_equals_four_runs(stitch_pipe):
    switch = {"kind": "srdiffusion", "rule": "paper", "threshold": 0.03, "change": "x0"}
    compare(stitch_pipe, TINY_PROMPTS, atol=5e-5, switch=switch, height=128, width=128, num_inference_steps=8,
            guidance_scale=4.0, max_sequence_length=8)


@pytest.fixture(scope="module")
def shapes_pipe():
    from stitchkit.pipeline.pairs import load_pair_pipeline

    torch.set_num_threads(1)
    return load_pair_pipeline("shapes")


def test_shapes_batch_of_four_equals_four_runs(shapes_pipe):
    switch = {"kind": "hybridstitch", "thresholds": [0.15, 0.05], "mask_ratios": [0.3]}
    batch, _ = compare(shapes_pipe, SHAPES_PROMPTS, atol=5e-5, switch=switch, num_inference_steps=8,
                       guidance_scale=3.0)
    switch_steps = [next(i for i, r in enumerate(t) if r.stage == 1) for t in batch.traces]
    assert len(set(switch_steps)) > 1  # the prompts left the large stage at different steps (Fig. 8)
    # The batch's summary trace reads as before where the samples agree, and says -1 where they do not.
    for i, record in enumerate(batch.trace):
        stages = {t[i].stage for t in batch.traces}
        assert record.stage == (stages.pop() if len(stages) == 1 else -1)


def test_units_of_a_batch_are_the_units_alone(stitch_pipe):
    """generate_units: each unit's image, trace and masks are the ones a batch of one gives."""
    from stitchkit.pipeline.units import generate_units

    kwargs = dict(switch={"kind": "hybridstitch", "thresholds": [0.031, 0.025], "mask_ratios": [0.3]},
                  output_type="latent", height=128, width=128, num_inference_steps=6, guidance_scale=4.0,
                  max_sequence_length=8)
    units = generate_units(stitch_pipe, TINY_PROMPTS[:3], [5, 6, 7], **kwargs)
    for b, unit in enumerate(units):
        (alone,) = generate_units(stitch_pipe, [TINY_PROMPTS[b]], [5 + b], **kwargs)
        assert [r.stage for r in unit.trace] == [r.stage for r in alone.trace]
        assert unit.masks == alone.masks and unit.masks["steps"]
        assert (unit.image - alone.image).abs().max() <= 5e-5


class ContextWithoutRows:
    """A context provider written before batches had per-sample stages (no rows= keyword)."""

    def reset(self):
        pass

    def full(self, large, inputs):
        self.large = large
        return large.forward(inputs, record=True)

    def masked(self, large, inputs, indices):
        return large.forward_masked(inputs, indices)

    def release(self):
        if getattr(self, "large", None) is not None:
            self.large.free_cache()


def test_an_outside_context_without_rows_works_alone_and_is_refused_in_a_mixed_batch(stitch_pipe):
    from stitchkit import ConfigError

    kwargs = dict(switch={"kind": "hybridstitch", "thresholds": [0.031, 0.025], "mask_ratios": [0.3]},
                  output_type="latent", height=128, width=128, num_inference_steps=10, guidance_scale=4.0,
                  max_sequence_length=8)
    out = stitch_pipe(TINY_PROMPTS[0], generator=generators()[0], context=ContextWithoutRows(), **kwargs)
    assert 1 in [r.stage for r in out.trace]
    with pytest.raises(ConfigError) as err:
        stitch_pipe(TINY_PROMPTS, generator=generators(), context=ContextWithoutRows(), **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "context: ContextWithoutRows.full() and ContextWithoutRows.masked() take no rows= argument")


def test_tiny_random_unguided_batch_of_four_equals_four_runs(stitch_pipe):
    """Without guidance a sample is one row of the model batch (no CFG halves): the same grouping."""
    switch = {"kind": "hybridstitch", "thresholds": [0.027, 0.0205], "mask_ratios": [0.3]}
    compare(stitch_pipe, TINY_PROMPTS, atol=5e-5, switch=switch, height=128, width=128, num_inference_steps=10,
            guidance_scale=1.0, max_sequence_length=8)
