"""Caches on the loop's clock (issue 20): on the shapes pair, a cache composed with a schedule computes its
model at exactly the steps where the same cache alone would, from the first step that model runs.

What "computed" means is read off the model itself, independently of the cache's state: a step where the
cache skipped (MagCache) or extrapolated (TaylorSeer, attention cached) runs no attention projection.
The MagCache ratios are the issue's hand-made ones: 1.0 at steps 8, 9, 12, 13, 16, 17 and 4.0 elsewhere,
threshold 0.5, max skip 10, retention 0.2: alone, MagCache computes steps 0-7, 10, 11, 14, 15, 18, 19.
"""

import contextlib

import attrs
import pytest
import torch

import stitchkit.loop.caches
from stitchkit.protocols import Decision

STEPS = 20
PROMPTS = ["a small red circle at the top left on a blue background",
           "a large green square at the center on a white background"]
RATIOS = [1.0 if i in (8, 9, 12, 13, 16, 17) else 4.0 for i in range(STEPS)]
MAGCACHE = {"kind": "magcache", "threshold": 0.5, "max_skip_steps": 10, "retention_ratio": 0.2, "mag_ratios": RATIOS}
MAGCACHE_ALONE = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 14, 15, 18, 19]
TAYLORSEER = {"kind": "taylorseer", "cache_interval": 3, "disable_cache_before_step": 2}
TAYLORSEER_ALONE = [0, 1, 3, 6, 9, 12, 15, 18]  # warm-up 0, 1; then (step - 2 - 1) % 3 == 0


@pytest.fixture(scope="module")
def shapes_pipe():
    from stitchkit.pipeline.pairs import load_pair_pipeline

    torch.set_num_threads(1)
    return load_pair_pipeline("shapes")


@attrs.define
class Tail:
    """Large model for steps ``< first_small``, then the small model (SRDiffusion's shape, fixed)."""

    first_small: int
    change_measure = "x0"
    may_mask = False

    def reset(self, num_steps):
        pass

    def decide(self, state):
        if state.step < self.first_small:
            return Decision(stage=0, large=True, small=False)
        return Decision(stage=1, large=False, small=True)


@attrs.define
class PerSample:
    """A batched policy: sample ``b`` follows ``policies[b]`` (so samples sit in different stages)."""

    policies: list
    change_measure = "x0"
    may_mask = False
    batched = True

    def reset(self, num_steps):
        for p in self.policies:
            p.reset(num_steps)

    def decide(self, state):
        return [p.decide(state) for p in self.policies]


@contextlib.contextmanager
def computed_steps(pipe, monkeypatch):
    """``{(role, context): [steps]}``: the loop steps at which a cached model's call ran attention."""
    seen: dict[tuple[str, str], list[int]] = {}
    original = stitchkit.loop.caches.ModelCache.call

    def spy(self, fn, samples=None, **where):
        model = self.model
        ran = []
        handles = [block.attn.to_q.register_forward_hook(lambda *a: ran.append(1))
                   for block in model.transformer_blocks]
        try:
            out = original(self, fn, samples, **where)
        finally:
            for h in handles:
                h.remove()
        if ran:
            seen.setdefault((self.role, self.context_name(samples)), []).append(where["step_index"])
        return out

    monkeypatch.setattr(stitchkit.loop.caches.ModelCache, "call", spy)
    yield seen


def _run(pipe, monkeypatch, *, switch, cache, prompts=PROMPTS[:1], seeds=(0,)):
    with computed_steps(pipe, monkeypatch) as seen:
        out = pipe(list(prompts), generator=[torch.Generator().manual_seed(s) for s in seeds],
                   num_inference_steps=STEPS, guidance_scale=3.0, output_type="latent", switch=switch, cache=cache)
    monkeypatch.undo()
    return out, seen


def _alone(pipe, monkeypatch, role, cache):
    _, seen = _run(pipe, monkeypatch, switch=role, cache={role: cache})
    return seen[(role, role)]


def test_magcache_alone_computes_the_issues_steps(shapes_pipe, monkeypatch):
    assert _alone(shapes_pipe, monkeypatch, "large", MAGCACHE) == MAGCACHE_ALONE
    assert _alone(shapes_pipe, monkeypatch, "small", MAGCACHE) == MAGCACHE_ALONE


@pytest.mark.parametrize("cache, alone", [(MAGCACHE, MAGCACHE_ALONE), (TAYLORSEER, TAYLORSEER_ALONE)],
                         ids=["magcache", "taylorseer"])
def test_small_head_large_tail(shapes_pipe, monkeypatch, cache, alone):
    """t-stitch 0.3: small for steps 0-5, the cache on the large model, which first runs at step 6."""
    assert _alone(shapes_pipe, monkeypatch, "large", cache) == alone
    _, seen = _run(shapes_pipe, monkeypatch, switch={"kind": "t-stitch", "small_fraction": 0.3},
                   cache={"large": cache})
    assert seen[("large", "large")] == [s for s in alone if s >= 6]


@pytest.mark.parametrize("cache, alone, first_small", [(MAGCACHE, MAGCACHE_ALONE, 10), (TAYLORSEER, TAYLORSEER_ALONE, 9)],
                         ids=["magcache", "taylorseer"])
def test_large_head_small_tail(shapes_pipe, monkeypatch, cache, alone, first_small):
    """Large first, the cache on the small model, which first runs at ``first_small`` (a step where the
    cache alone computes, so the two must agree at every step)."""
    assert _alone(shapes_pipe, monkeypatch, "small", cache) == alone
    _, seen = _run(shapes_pipe, monkeypatch, switch=Tail(first_small), cache={"small": cache})
    assert seen[("small", "small")] == [s for s in alone if s >= first_small]


@pytest.mark.parametrize("cache, first_small, expected", [(MAGCACHE, 8, [8, 10, 11, 14, 15, 18, 19]),
                                                         (TAYLORSEER, 10, [10, 12, 15, 18])],
                         ids=["magcache", "taylorseer"])
def test_a_model_starts_without_history(shapes_pipe, monkeypatch, cache, first_small, expected):
    """At a step where the cache alone would reuse, a model running for the first time has nothing to reuse:
    it computes that step, then follows the cache's decisions at the loop's steps."""
    _, seen = _run(shapes_pipe, monkeypatch, switch=Tail(first_small), cache={"small": cache})
    assert seen[("small", "small")] == expected


def test_a_model_that_resumes_starts_without_a_previous_residual(shapes_pipe, monkeypatch):
    """reuse-every 2 runs the large model at even steps only: every call follows a step it did not run,
    so MagCache never has a residual to add and computes every time (never the stale one of two steps ago)."""
    _, seen = _run(shapes_pipe, monkeypatch, switch={"kind": "reuse-every", "inner": "large", "every": 2, "from_stage": 0},
                   cache={"large": MAGCACHE})
    assert seen[("large", "large")] == list(range(0, STEPS, 2))


def test_a_mixed_batch_keeps_each_samples_cache_state(shapes_pipe, monkeypatch):
    """Two samples switching to the large model at steps 6 and 10: each computes exactly where it computes
    alone (its own MagCache state, whichever group it is in), and its image is the one it gets alone."""
    from stitchkit.policies.tstitch import TStitch

    fractions = (0.3, 0.5)  # large from step 6, and from step 10
    batch, seen = _run(shapes_pipe, monkeypatch, switch=PerSample([TStitch(small_fraction=f) for f in fractions]),
                       cache={"large": MAGCACHE}, prompts=PROMPTS, seeds=(0, 1))
    assert any(step.mixed for step in batch.steps)
    for b, (fraction, first_large) in enumerate(zip(fractions, (6, 10))):
        alone, alone_seen = _run(shapes_pipe, monkeypatch, switch={"kind": "t-stitch", "small_fraction": fraction},
                                 cache={"large": MAGCACHE}, prompts=PROMPTS[b:b + 1], seeds=(b,))
        assert alone_seen[("large", "large")] == [s for s in MAGCACHE_ALONE if s >= first_large]
        assert seen[("large", f"large:{b}")] == alone_seen[("large", "large")], f"sample {b}"
        assert (batch.images[b] - alone.images[0]).abs().max() <= 5e-5, f"sample {b}"


def test_a_cache_without_a_clock_is_refused_when_its_model_skips_a_step(shapes_pipe):
    """An outside cache plugin that counts its own calls and has no ``at_step`` cannot be put on the
    loop's clock: refused, one line, as soon as its model first runs after a step it did not run."""
    from stitchkit import ConfigError

    @attrs.frozen
    class Counting:
        kind = "counting"
        needs_calibration = False

        def apply(self, model, setup):
            pass

    with pytest.raises(ConfigError, match=r"^cache\.large: Counting counts its own calls.*step 6"):
        shapes_pipe(PROMPTS[0], num_inference_steps=STEPS, output_type="latent",
                    switch={"kind": "t-stitch", "small_fraction": 0.3}, cache={"large": Counting()})
