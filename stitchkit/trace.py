"""One record per denoising step: what ran, on how many tokens, how long it took, and the change D_t.

The records are the raw material of every table stitchkit prints (speedup, large-model step equivalents)
and of the latency model's prediction for a run (``stitchkit.latency``), so they hold counts and times, not
derived numbers that could drift from their source.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class StepRecord:
    """What happened at one step of one generation (one batch).

    ``large_tokens``/``small_tokens``: image tokens per sample each model computed (0: it did not run).
    ``mask_ratio`` = large_tokens / N. ``change``: D_t (Eq. 9) of this step against the one before, the
    largest over the batch's samples (``None`` before it can be computed). ``large_ms``/``small_ms``: wall
    time of each model call, synchronized on a GPU.
    """

    step: int
    timestep: float
    sigma: float
    stage: int
    large_tokens: int
    small_tokens: int
    num_tokens: int
    mask_ratio: float
    change: float | None
    large_ms: float
    small_ms: float

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def large_step_equivalents(trace) -> float:
    """Σ large_tokens / N: how many full large-model steps the run's large-model work amounts to."""
    return sum(r.large_tokens / r.num_tokens for r in trace)


def latency_steps(records) -> list[tuple[float, bool]]:
    """(large model's share of the tokens, small model ran) per step: what the latency model prices
    (:func:`stitchkit.latency.predict_from_steps`). Takes records or their JSON dicts."""
    rows = (r.to_dict() if isinstance(r, StepRecord) else r for r in records)
    return [(r["mask_ratio"], r["small_tokens"] > 0) for r in rows]
