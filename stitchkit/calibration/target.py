"""Thresholds calibrated to a target: the smallest predicted speedup that reaches X (or the most large-step
equivalents within E), searched on the adaptive loop's own traces (:mod:`stitchkit.calibration.replay`).

A method's *knobs* are its thresholds (HybridStitch: one per transition, strictly decreasing), SRDiffusion's
``threshold`` or T-Stitch's ``small_fraction``. A threshold changes what happens only where it crosses a
value the rule compares, so the candidates for each knob are the midpoints between the sorted values seen
in the recorded runs (plus one below all and one above all): D_t for HybridStitch, D_t and the drops
``tanh(D_{t-1}) - tanh(D_t)`` for SRDiffusion; for T-Stitch the step fractions ``(k + 0.5) / T``.
Raising the *last* knob only makes its transition come earlier (the stage before it is already fixed by
the others), so the predicted speedup rises with it: the last knob is found by bisection, the others are
enumerated (candidates that switch every unit at the same steps are one candidate).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Hashable, Sequence
from itertools import pairwise
from typing import Any

import attrs
import numpy as np

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import Costs
from stitchkit.calibration.replay import Summary, TraceStore, replay, scheduled_like, summarize

#: A threshold no D_t reaches: stands for "not yet chosen" while an earlier knob is searched.
_NEVER = 1e-300


@attrs.frozen(kw_only=True)
class Knob:
    """One number of the method: ``param`` (``thresholds``, ``threshold``, ``small_fraction``) at ``index``."""

    param: str
    index: int | None = None

    @property
    def label(self) -> str:
        return self.param if self.index is None else f"{self.param}[{self.index}]"


def knobs_of(policy: Any, path: str = "--method") -> tuple[Knob, ...]:
    """The numbers calibration tunes for ``policy``; a :class:`ConfigError` when it has none."""
    thresholds = getattr(policy, "thresholds", None)
    if isinstance(thresholds, tuple) and thresholds:
        return tuple(Knob(param="thresholds", index=i) for i in range(len(thresholds)))
    for param in ("threshold", "small_fraction"):
        if hasattr(policy, param):
            return (Knob(param=param),)
    raise ConfigError(path, f"{type(policy).__name__} has no threshold to calibrate",
                      "a hybridstitch, srdiffusion or t-stitch method")


def with_values(knobs: Sequence[Knob], values: Sequence[float]) -> dict[str, Any]:
    """The switch parameters that set ``knobs`` to ``values``."""
    if knobs[0].index is not None:
        return {knobs[0].param: [float(v) for v in values]}
    return {knobs[0].param: float(values[0])}


@attrs.frozen(kw_only=True)
class Target:
    """``kind="speedup"``: predicted speedup >= value; ``kind="large_steps"``: large-step equivalents <= value."""

    kind: str
    value: float

    def excess(self, summary: Summary) -> float:
        """How far past the target (>= 0: reached); the search minimises it."""
        if self.kind == "speedup":
            return summary.speedup - self.value
        return self.value - summary.large_step_equivalents


def check_goal(flag: str, value: float | None) -> None:
    """Refuse a goal no calibration can mean: a speedup at or below 1 (the large model alone already reaches
    it: the search would print a method to paste that is no faster, issue 25), a large-step budget at or
    below 0, or a non-finite number."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(flag, f"is {value}", "give a finite number")
    if flag == "--target-speedup" and value <= 1.0:
        raise ConfigError(flag, f"is {value:g}, at or below 1: the large model alone is 1x",
                          "ask for a speedup above 1, e.g. --target-speedup 1.5")
    if flag == "--target-large-steps" and value <= 0.0:
        raise ConfigError(flag, f"is {value:g}, not above 0", "give a positive budget of large-step equivalents")


@attrs.frozen(kw_only=True)
class Problem:
    """What the search needs: a policy for given knob values, the recorded runs, and the costs."""

    build: Callable[[Sequence[float]], Any]
    knobs: tuple[Knob, ...]
    store: TraceStore
    units: tuple[Hashable, ...]
    num_steps: int
    num_tokens: int
    costs: Costs
    computes_all_tokens: bool = False
    max_candidates: int | None = 24

    @property
    def reads_changes(self) -> bool:
        return self.knobs[0].param != "small_fraction"

    def replays(self, values: Sequence[float], stop_at_stage: int | None = None):
        policy = self.build(values)
        store = self.store if self.reads_changes else None
        return [replay(policy, store, u, num_steps=self.num_steps, num_tokens=self.num_tokens,
                       computes_all_tokens=self.computes_all_tokens, stop_at_stage=stop_at_stage)
                for u in self.units]

    def summary(self, values: Sequence[float]) -> Summary:
        return summarize(self.replays(values), self.costs)

    def bounds(self, chosen: Sequence[float]) -> tuple[Summary, Summary] | None:
        """Before the last knob's runs are recorded: the predictions if its transition came as early as
        it can (the step after its stage is entered) and if it never came. ``None`` with one knob."""
        k = len(chosen)
        if k == 0:
            return None
        placeholder = list(chosen) + [_NEVER / (j + 1) for j in range(len(self.knobs) - k)]
        policy = self.build(placeholder)
        fast, slow = [], []
        for unit in self.units:
            r = replay(policy, self.store, unit, num_steps=self.num_steps, num_tokens=self.num_tokens,
                       computes_all_tokens=self.computes_all_tokens, stop_at_stage=k)
            if len(r.transitions) < k:  # never reaches the last knob's stage: exact already
                fast.append(r)
                slow.append(r)
                continue
            for out, transitions in ((fast, r.transitions + (r.transitions[-1] + 1,)), (slow, r.transitions)):
                transitions = tuple(t for t in transitions if t < self.num_steps)
                out.append(replay(scheduled_like(policy, transitions), None, unit, num_steps=self.num_steps,
                                  num_tokens=self.num_tokens, computes_all_tokens=self.computes_all_tokens))
        return summarize(fast, self.costs), summarize(slow, self.costs)


@attrs.frozen(kw_only=True)
class Found:
    values: tuple[float, ...]
    summary: Summary
    runs: int


def midpoints(values: Sequence[float]) -> list[float]:
    """Thresholds between the sorted distinct ``values``, one below all and one above all."""
    u = sorted({float(v) for v in values if np.isfinite(v)})
    if not u:
        return []
    below = u[0] / 2 if u[0] > 0 else u[0] - 1.0
    return [below] + [(a + b) / 2 for a, b in pairwise(u)] + [u[-1] * 2 if u[-1] > 0 else u[-1] + 1.0]


def _thin(values: list[float], limit: int | None) -> list[float]:
    if limit is None or len(values) <= limit:
        return values
    idx = np.unique(np.linspace(0, len(values) - 1, limit).round().astype(int))
    return [values[i] for i in idx]


def candidates(problem: Problem, chosen: Sequence[float]) -> list[float]:
    """Ascending candidate values of knob ``len(chosen)`` given the earlier knobs' values."""
    k = len(chosen)
    knob = problem.knobs[k]
    if knob.param == "small_fraction":
        t = problem.num_steps
        return [min(1.0, (j + 0.5) / t) for j in range(t + 1)]
    # Replay with this knob and later ones "never": the runs of stage k get recorded, and say what it sees.
    placeholder = list(chosen) + [_NEVER / (j + 1) for j in range(len(problem.knobs) - k)]
    seen: list[float] = []
    for r, unit in zip(problem.replays(placeholder), problem.units):
        if len(r.transitions) < k:
            continue  # this unit never reaches stage k with these values
        prefix = r.transitions[:k]  # (a rule may still leave stage k by itself, e.g. max_switch_step)
        handed = problem.store.handed(unit, prefix)
        start = prefix[-1] + 1 if k else 0
        d = [x for x in handed[start:] if x is not None]
        seen += d
        if knob.param == "threshold":  # SRDiffusion's drop rules compare tanh(D_{t-1}) - tanh(D_t)
            t = np.tanh(np.asarray(d, dtype=np.float64))
            seen += [float(x) for x in (t[:-1] - t[1:]) if x > 0]
    values = midpoints(seen)
    if k and knob.index is not None:
        values = [v for v in values if 0 < v < chosen[-1]]  # strictly decreasing thresholds
    else:
        values = [v for v in values if v > 0]
    return _thin(values, problem.max_candidates)


def _distinct(problem: Problem, chosen: Sequence[float], values: list[float]) -> list[float]:
    """One candidate (the middle one) per distinct set of switch steps of knob ``len(chosen)``; the replay
    stops when the next stage is entered, so no run of that stage is recorded for it."""
    rest = len(problem.knobs) - len(chosen) - 1
    groups: dict[tuple, list[float]] = {}
    for v in values:
        placeholder = list(chosen) + [v] + [_NEVER / (j + 1) for j in range(rest)]
        key = tuple(r.transitions for r in problem.replays(placeholder, stop_at_stage=len(chosen) + 1))
        groups.setdefault(key, []).append(v)
    return [g[len(g) // 2] for g in groups.values()]


def reaching(problem: Problem, target: Target, within: Callable[[], float]):
    """Every ``(values, summary)`` that reaches ``target`` by at most ``within()`` (its excess): per distinct
    setting of the earlier knobs, the last knob's values from the least that reaches the target (found by
    bisection: the excess rises with the last knob) upwards while still within. A setting of the earlier
    knobs that cannot reach the target, or whose slowest last value is already past ``within()``, records
    nothing (``within`` is read as the search goes, so a caller may tighten it)."""
    def solve(chosen: list[float]):
        if len(chosen) == len(problem.knobs) - 1 and (bounds := problem.bounds(chosen)) is not None:
            fast, slow = (target.excess(b) for b in bounds)
            if fast < 0 or slow > within():
                return  # cannot reach the target, or every setting is past the bound: record nothing for it
        values = candidates(problem, chosen)
        if len(chosen) < len(problem.knobs) - 1:
            for v in _distinct(problem, chosen, values):
                yield from solve(chosen + [v])
            return
        lo, hi, hit = 0, len(values) - 1, None  # excess rises with the last knob: bisect for >= 0
        while lo <= hi:
            mid = (lo + hi) // 2
            summary = problem.summary(chosen + [values[mid]])
            if target.excess(summary) >= 0:
                hit, hi = (mid, summary), mid - 1
            else:
                lo = mid + 1
        if hit is None:
            return
        index, summary = hit
        while target.excess(summary) <= within():
            yield tuple(chosen + [values[index]]), summary
            index += 1
            if index == len(values) or target.excess(summary) >= within():
                return  # the next value only goes further past (search(): past the best already)
            summary = problem.summary(chosen + [values[index]])

    yield from solve([])


def search(problem: Problem, target: Target) -> Found:
    """The knob values whose prediction reaches ``target`` by the least (see the module docstring)."""
    best: tuple[float, tuple[float, ...], Summary] | None = None

    def bound() -> float:  # read as the search goes: a prefix that cannot beat the best records nothing
        return np.inf if best is None else best[0]

    for values, summary in reaching(problem, target, bound):
        excess = target.excess(summary)
        if best is None or excess < best[0]:
            best = (excess, values, summary)
    if best is None:
        raise out_of_reach(problem, target)
    return Found(values=best[1], summary=best[2], runs=problem.store.runs)


def out_of_reach(problem: Problem, target: Target) -> ConfigError:
    """The one-line refusal for a target no candidate reaches, naming the fastest prediction."""
    fastest = _fastest(problem)
    what = (f"{fastest.speedup:.3f}x" if target.kind == "speedup"
            else f"{fastest.large_step_equivalents:.2f} large-step equivalents")
    flag = "--target-speedup" if target.kind == "speedup" else "--target-large-steps"
    return ConfigError(flag, f"{target.value:g} is out of reach for this method on these runs",
                       f"the fastest candidate predicts {what}")


def _fastest(problem: Problem) -> Summary:
    chosen: list[float] = []
    for _ in problem.knobs:
        values = candidates(problem, chosen)
        chosen.append(values[-1] if values else _NEVER)
    return problem.summary(chosen)


def shortest(problem: Problem, values: Sequence[float]) -> tuple[float, ...]:
    """``values`` rounded to the fewest significant digits that switch every unit at the same steps."""
    want = [r.transitions for r in problem.replays(values)]
    for digits in range(2, 18):
        rounded = tuple(float(f"{v:.{digits}g}") for v in values)
        if len(set(rounded)) == len(rounded) and [r.transitions for r in problem.replays(rounded)] == want:
            return rounded
    return tuple(values)
