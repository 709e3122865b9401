"""Replay an adaptive switch policy on the loop's own recorded D_t, for any candidate thresholds.

An adaptive policy's run is the same as a run that was *told* where to switch, up to the step where the
two first decide differently: the models, masks, caches and so D_t (Eq. 9-10) are bit for bit the same on
a deterministic device. So one recorded run per *prefix* of switch steps answers every candidate that
switches there: a :class:`ScheduledPolicy` run enters the stages at the prefix's steps and then stays in
its last stage to the end, recording D_t as it goes. Replaying a candidate (:func:`replay`) calls the
candidate policy's own ``decide`` on the D_t of the run whose prefix matches its switches so far; when it
switches, it continues on the run of the longer prefix (recorded on demand by the :class:`TraceStore`).
Nothing in the final stage is read, so the small-only stage is never recorded.

A replayed rule may read ``step``, ``num_steps`` and ``change`` (every built-in switch policy does);
``timestep``/``sigma`` are 0 and there is no change map in a replay. What each step costs follows from the
replayed decision (Eq. 3-6 via :func:`stitchkit.cost.latency.predict_from_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs
import torch

from stitchkit.cost.latency import Costs, predict_from_steps
from stitchkit.masks import mask_size
from stitchkit.protocols import Decision, LoopState

#: The D_t handed to ``decide`` at each step of one recorded run (``None`` where nothing was compared).
Handed = Sequence[float | None]


@attrs.define(kw_only=True)
class ScheduledPolicy:
    """Stage ``k`` from step ``transitions[k-1]`` on, for the stages ``kinds``; after the last transition
    it stays in that stage to the end. Mirrors the adaptive method's measures, masks and ``may_mask`` so
    that its run is the method's run up to the next switch."""

    kinds: tuple[str, ...]
    mask_ratios: tuple[float, ...]
    transitions: tuple[int, ...]
    change_measure: str
    mask_measure: str | None = None
    may_mask: bool = True

    @property
    def stages(self) -> tuple[str, ...]:
        return self.kinds

    def reset(self, num_steps: int) -> None:
        pass  # a function of the step alone

    def decide(self, state: LoopState) -> Decision:
        stage = sum(1 for t in self.transitions if state.step >= t)
        kind = self.kinds[stage]
        if kind == "large":
            return Decision(stage=stage, large=True, small=False)
        if kind == "small":
            return Decision(stage=stage, large=False, small=True)
        return Decision(stage=stage, large=True, small=True,
                        mask_ratio=self.mask_ratios[self.kinds[:stage].count("hybrid")])


def scheduled_like(policy: Any, transitions: tuple[int, ...]) -> ScheduledPolicy:
    """The :class:`ScheduledPolicy` that records ``policy``'s run for the switch prefix ``transitions``."""
    return ScheduledPolicy(
        kinds=tuple(policy.stages), mask_ratios=tuple(getattr(policy, "mask_ratios", ()) or ()),
        transitions=tuple(transitions), change_measure=policy.change_measure,
        mask_measure=getattr(policy, "mask_measure", None), may_mask=getattr(policy, "may_mask", True))


class TraceStore:
    """Recorded D_t per (unit, switch prefix), recorded on first use by ``record(unit, prefix)``."""

    def __init__(self, record: Callable[[Hashable, tuple[int, ...]], Handed]) -> None:
        self._record = record
        self._runs: dict[tuple[Hashable, tuple[int, ...]], list[float | None]] = {}

    def handed(self, unit: Hashable, prefix: tuple[int, ...]) -> list[float | None]:
        key = (unit, prefix)
        if key not in self._runs:
            self._runs[key] = list(self._record(unit, prefix))
        return self._runs[key]

    @property
    def runs(self) -> int:
        """How many runs were recorded."""
        return len(self._runs)

    def values(self, units=None, prefix_len: int | None = None) -> list[float]:
        """Every D_t recorded (for ``units``; for runs whose prefix has ``prefix_len`` switches)."""
        return [d for (unit, prefix), handed in self._runs.items()
                if (units is None or unit in units) and (prefix_len is None or len(prefix) == prefix_len)
                for d in handed if d is not None]


def handed_from_trace(trace) -> list[float | None]:
    """What ``decide`` saw at each step of a run: the change recorded one step earlier."""
    return [None] + [r.change for r in list(trace)[:-1]]


@attrs.frozen(kw_only=True)
class Replayed:
    """One unit's replay: the steps where the stage changed, and ``(large fraction, small ran)`` per step."""

    transitions: tuple[int, ...]
    steps: tuple[tuple[float, bool], ...]

    @property
    def large_step_equivalents(self) -> float:
        return sum(f for f, _ in self.steps)


def replay(policy: Any, store: TraceStore | None, unit: Hashable, *, num_steps: int, num_tokens: int,
           computes_all_tokens: bool = False, stop_at_stage: int | None = None) -> Replayed:
    """Drive ``policy`` through one generation on the recorded D_t (``store=None``: a rule that reads none).

    The D_t at step ``i`` comes from the run of the switches decided before ``i``, so it is exactly what
    the policy would have seen in a real run; the final stage reads nothing. ``stop_at_stage``: stop on
    entering that stage (its runs are not recorded; ``steps`` then ends at the entry step).
    """
    policy.reset(num_steps)
    last = len(policy.stages) - 1
    prefix: tuple[int, ...] = ()
    stage, steps = 0, []
    for i in range(num_steps):
        change = None
        if store is not None and stage < last:
            d = store.handed(unit, prefix)[i]
            change = None if d is None else torch.tensor([d], dtype=torch.float64)
        decision = policy.decide(LoopState(step=i, num_steps=num_steps, timestep=0.0, sigma=0.0,
                                           num_tokens=num_tokens, grid=(1, num_tokens), batch_size=1,
                                           change=change))
        if decision.stage != stage:
            prefix, stage = prefix + (i,), decision.stage
        steps.append(_step_cost(decision, num_tokens, computes_all_tokens))
        if stop_at_stage is not None and stage >= stop_at_stage:
            break
    return Replayed(transitions=prefix, steps=tuple(steps))


def _step_cost(decision: Decision, num_tokens: int, computes_all_tokens: bool) -> tuple[float, bool]:
    if decision.hybrid:
        share = 1.0 if computes_all_tokens else mask_size(decision.mask_ratio, num_tokens) / num_tokens
        return share, True
    # A corrector's anchor runs both models; a step that reuses runs neither.
    return (1.0, decision.small) if decision.large else (0.0, decision.small)


@attrs.frozen(kw_only=True)
class Summary:
    """The latency model over a set of replays: speedup over the large model, mean large-step equivalents."""

    speedup: float
    large_step_equivalents: float
    transitions: tuple[tuple[int, ...], ...]


def summarize(replays: Sequence[Replayed], costs: Costs) -> Summary:
    """Speedup = Σ T·L_l / Σ predicted (the refined prediction when the costs hold a profile)."""
    large_only = predicted = 0.0
    for r in replays:
        p = predict_from_steps(r.steps, costs)
        large_only += p.large_only_ms
        predicted += p.best_predicted_ms
    return Summary(speedup=large_only / predicted,
                   large_step_equivalents=sum(r.large_step_equivalents for r in replays) / len(replays),
                   transitions=tuple(r.transitions for r in replays))
