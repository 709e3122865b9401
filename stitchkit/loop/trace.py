"""One record per denoising step: what ran, on how many tokens, how long it took, and the change D_t.

The records are the raw material of every table stitchkit prints (speedup, large-model step equivalents)
and of the latency model's prediction for a run (``stitchkit.cost.latency``), so they hold counts and times, not
derived numbers that could drift from their source.

In a batch every sample has its own trace (its own stage and tokens per step: decisions are per sample),
and each step of the batch has one :class:`BatchStep`, the model calls it made: a step whose samples were
in different stages (a *mixed* step) runs one call per group of samples, and is priced as those calls.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class StepRecord:
    """What happened to one sample at one step of a generation.

    ``large_tokens``/``small_tokens``: image tokens of this sample each model computed (0: it did not run;
    a batch's summary record, :func:`batch_record`, holds the mean over the samples).
    ``mask_ratio`` = large_tokens / N. ``change``: this sample's D_t (Eq. 9) of this step against the one
    before (``None`` before it can be computed). ``large_ms``/``small_ms``: wall time of each model call,
    synchronized on a GPU; in a batch, this sample's share of the batched call it was part of (the call's
    time over its samples). ``sample``: the sample's place in the batch (``-1``: the batch's summary).
    ``reused_tokens``: tokens whose prediction was the sample's previous one (reuse; no model computed them,
    so they count in neither model's tokens and the latency model prices them as free).
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
    sample: int = 0
    reused_tokens: int = 0

    def to_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ModelCall:
    """One batched model call of a step: ``model`` (``"large"`` or ``"small"``) on ``samples`` (their places
    in the batch; both CFG halves of each ran), ``tokens`` image tokens of each (``N`` for a full forward,
    ``m`` for a masked one), taking ``ms`` of wall time."""

    model: str
    samples: tuple[int, ...]
    tokens: int
    num_tokens: int
    ms: float

    def to_dict(self) -> dict:
        return {**attrs.asdict(self), "samples": list(self.samples)}


@attrs.frozen(kw_only=True)
class BatchStep:
    """The model calls one step of a batch made. ``mixed``: its samples were not all given the same
    decision, so it ran more than one group (the engine's grouping, Algorithm 1 per sample)."""

    step: int
    calls: tuple[ModelCall, ...]
    mixed: bool

    def to_dict(self) -> dict:
        return {"step": self.step, "calls": [c.to_dict() for c in self.calls], "mixed": self.mixed}


def batch_record(records, step: BatchStep) -> StepRecord:
    """One step of a batch as one record (``sample = -1``), the way a batch's trace read before decisions
    were per sample: ``stage`` the samples' common stage (``-1`` in a mixed step), ``large_tokens`` and
    ``small_tokens`` the mean over the samples (whole numbers unless the step was mixed), ``change`` the
    largest ``D_t``, ``large_ms``/``small_ms`` the wall time of all the step's calls of each model. A batch
    of one is its sample's record itself."""
    records = list(records)
    if len(records) == 1:
        return records[0]
    first, k = records[0], len(records)
    stages = {r.stage for r in records}
    large = sum(r.large_tokens for r in records) / k
    small = sum(r.small_tokens for r in records) / k
    changes = [r.change for r in records if r.change is not None]
    return StepRecord(
        step=first.step, timestep=first.timestep, sigma=first.sigma,
        stage=stages.pop() if len(stages) == 1 else -1,
        large_tokens=int(large) if large == int(large) else large,
        small_tokens=int(small) if small == int(small) else small,
        num_tokens=first.num_tokens, mask_ratio=large / first.num_tokens,
        change=max(changes) if changes else None,
        large_ms=sum(c.ms for c in step.calls if c.model == "large"),
        small_ms=sum(c.ms for c in step.calls if c.model == "small"),
        sample=-1,
        reused_tokens=_whole(sum(r.reused_tokens for r in records) / k),
    )


def _whole(x: float):
    return int(x) if x == int(x) else x


def large_step_equivalents(trace) -> float:
    """Σ large_tokens / N: how many full large-model steps the run's large-model work amounts to."""
    return sum(r.large_tokens / r.num_tokens for r in trace)


def latency_steps(records) -> list[tuple[float, bool]]:
    """(large model's share of the tokens, small model ran) per step: what the latency model prices
    (:func:`stitchkit.cost.latency.predict_from_steps`). Takes records or their JSON dicts."""
    rows = (r.to_dict() if isinstance(r, StepRecord) else r for r in records)
    return [(r["mask_ratio"], r["small_tokens"] > 0) for r in rows]


def latency_calls(steps) -> list[list[tuple[str, float, int]]]:
    """``(model, share of the tokens, samples)`` per call, per step: what
    :func:`stitchkit.cost.latency.predict_from_calls` prices. Takes :class:`BatchStep` records or their dicts."""
    rows = (s.to_dict() if isinstance(s, BatchStep) else s for s in steps)
    return [[(c["model"], c["tokens"] / c["num_tokens"], len(c["samples"])) for c in r["calls"]] for r in rows]
