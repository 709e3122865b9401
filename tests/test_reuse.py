"""Reuse as a predictor: a step's prediction, or its unmasked tokens, from the sample's previous ones."""

import pytest
import torch

from stitchkit.cost.latency import Costs, predict_from_steps
from stitchkit.masks import mask_size
from stitchkit.tokens import patchify
from stitchkit.protocols import Decision
from stitchkit.loop.trace import large_step_equivalents, latency_steps

STEPS = 6
ARGS = dict(prompt=["a red circle", "a blue square"], height=128, width=128, num_inference_steps=STEPS,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent")
N = (128 // 8 // 2) ** 2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Schedule:
    """A switch policy playing a fixed list of decisions (one per step, or one list per sample)."""

    change_measure = "x0"
    batched = True

    def __init__(self, decisions):
        self.decisions = decisions

    def reset(self, num_steps):
        pass

    def decide(self, state):
        return self.decisions[state.step]


class FirstTokens:
    """A mask policy free of ties: the first m tokens (top-k on change maps that differ by float noise
    between a batch and a run alone may order near-equal tokens differently)."""

    batched = True

    def reset(self):
        pass

    def select(self, state, ratio):
        return torch.arange(mask_size(ratio, state.num_tokens)).expand(state.batch_size, -1)


LARGE = Decision(stage=0, large=True, small=False)
SMALL = Decision(stage=0, large=False, small=True)


def ras(ratio, reuse="as-is"):
    return Decision(stage=1, large=True, small=False, mask_ratio=ratio, reuse=reuse)


def skip(reuse="as-is"):
    return Decision(stage=1, large=False, small=False, reuse=reuse)


def _predictions(pipe, switch, mask=None, **kw):
    seen = []
    out = pipe(**{**ARGS, **kw}, generator=_gen(), switch=switch, mask=mask,
               callback=lambda info: seen.append(info))
    return out, seen


def test_decision_refuses_reuse_it_cannot_do():
    with pytest.raises(ValueError):
        Decision(stage=0, large=False, small=True, reuse="as-is")
    with pytest.raises(ValueError):
        Decision(stage=0, large=True, small=False, reuse="as-is")  # RAS needs a mask ratio
    with pytest.raises(ValueError):
        Decision(stage=0, large=False, small=False, reuse="sometimes")
    with pytest.raises(ValueError):
        Decision(stage=0, large=False, small=False)


def test_a_full_mask_ras_step_is_the_large_model(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen()).images
    out, _ = _predictions(stitch_pipe, Schedule([LARGE, LARGE] + [ras(1.0)] * (STEPS - 2)), mask="full")
    assert (out.images - expected).abs().max() <= 1e-5
    assert all(r.large_tokens == N and r.reused_tokens == 0 and r.small_tokens == 0 for r in out.trace)


def test_ras_keeps_the_previous_prediction_outside_the_mask(stitch_pipe):
    ratio = 0.25
    out, seen = _predictions(stitch_pipe, Schedule([LARGE, LARGE] + [ras(ratio)] * (STEPS - 2)))
    m = int(ratio * N + 0.5)
    for before, now in zip(seen[1:], seen[2:]):
        # Guidance is linear, so a reused token of the guided prediction is the previous guided one.
        prev, cur = patchify(before["prediction"], 2), patchify(now["prediction"], 2)
        indices = now["indices"]
        keep = torch.ones(cur.shape[:2], dtype=torch.bool)
        keep.scatter_(1, indices, False)
        assert torch.equal(cur[keep], prev[keep])
        assert not torch.equal(cur[~keep], prev[~keep])
    assert [r.large_tokens for r in out.trace[2:]] == [m] * (STEPS - 2)
    assert [r.reused_tokens for r in out.trace[2:]] == [N - m] * (STEPS - 2)
    assert large_step_equivalents(out.trace) == pytest.approx(2 + (STEPS - 2) * m / N)


def test_a_skipped_step_reuses_or_extrapolates_and_is_free(stitch_pipe):
    switch = Schedule([LARGE, LARGE, skip("as-is"), LARGE, SMALL, skip("extrapolate")])
    out, seen = _predictions(stitch_pipe, switch)
    p = [s["prediction"] for s in seen]
    assert torch.equal(p[2], p[1])
    # First order from the last two computed steps (3 and 4), one step on: 2·p4 − p3 (guidance is linear).
    assert torch.allclose(p[5], 2 * p[4] - p[3], atol=1e-6)
    assert [(r.large_tokens, r.small_tokens, r.reused_tokens) for r in out.trace] == [
        (N, 0, 0), (N, 0, 0), (0, 0, N), (N, 0, 0), (0, N, 0), (0, 0, N)]
    assert out.steps[2].calls == () and out.steps[5].calls == ()
    costs = Costs(large_ms=10.0, small_ms=2.0)
    predicted = predict_from_steps(latency_steps(out.trace), costs)
    assert (predicted.hybrid_large_ms, predicted.hybrid_small_ms) == pytest.approx((30.0, 2.0))
    assert predicted.speedup == pytest.approx(60.0 / 32.0)


def test_reuse_is_per_sample(stitch_pipe):
    """Sample 0 skips a step while sample 1 runs the large model: each gets what it gets alone."""
    latents = torch.randn(2, 16, 16, 16, generator=_gen(9))
    per_sample = [[LARGE, LARGE, skip(), ras(0.5), skip("extrapolate"), LARGE],
                  [LARGE, SMALL, LARGE, LARGE, ras(0.25), skip()]]
    both = stitch_pipe(**ARGS, latents=latents, switch=Schedule(list(zip(*per_sample))), mask=FirstTokens())
    for b, prompt in enumerate(ARGS["prompt"]):
        alone = stitch_pipe(**{**ARGS, "prompt": prompt}, latents=latents[b:b + 1],
                            switch=Schedule(per_sample[b]), mask=FirstTokens())
        assert (both.images[b:b + 1] - alone.images).abs().max() <= 1e-5
        assert [r.reused_tokens for r in both.traces[b]] == [r.reused_tokens for r in alone.trace]


def test_reusing_before_anything_was_computed_is_refused(stitch_pipe):
    with pytest.raises(ValueError, match="before any was computed"):
        stitch_pipe(**ARGS, switch=Schedule([skip()] * STEPS))
