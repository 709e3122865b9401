"""``--target-speedup X --best METRIC``: among the settings that reach the target, the best by quality.

Without ``--best`` calibration returns the setting whose predicted speedup reaches X by the least
(:func:`stitchkit.calibration.target.search`): with one threshold a fair stand-in for "the best quality at
X", since less speed buys more quality along one knob; with HybridStitch's two or three thresholds many
settings reach X and the least-past one is arbitrary (README table (c): HybridStitch-30 at 1.83× skipped its
all-large stage). Here every setting whose predicted speedup lies in ``[X, X·(1 + tolerance)]`` is listed
(:func:`stitchkit.calibration.target.reaching`), the ``count`` most promising are generated on the
calibration units — most promising: the most large-step equivalents, i.e. the most large-model compute
the target leaves — and the best by ``METRIC`` (any registered metric, against the large model's images of
the same units where it needs them) is chosen.

Each candidate is generated as the run it stands for: the replayed switch steps of each unit forced on the
method's own policy (:func:`stitchkit.calibration.replay.scheduled_like`, as ``--match`` does), which is the
adaptive run itself (``tests/test_calibration_e2e.py`` checks replays against real runs).
"""

from __future__ import annotations

from typing import Any

import attrs

from stitchkit.calibration.match import _metric, metric_score
from stitchkit.calibration.replay import Summary, scheduled_like
from stitchkit.calibration.target import Problem, Target, out_of_reach, reaching, with_values
from stitchkit.errors import ConfigError


@attrs.frozen(kw_only=True)
class Candidate:
    """One setting of the method's knobs, its prediction over the calibration units, and its score."""

    values: tuple[float, ...]
    summary: Summary
    score: float | None = None

    def as_json(self, problem: Problem, metric: str) -> dict[str, Any]:
        return {"params": with_values(problem.knobs, self.values), "predicted_speedup": self.summary.speedup,
                "large_step_equivalents": self.summary.large_step_equivalents, metric: self.score}


@attrs.frozen(kw_only=True)
class Best:
    chosen: Candidate
    candidates: tuple[Candidate, ...]  # the generated ones, in the order they were ranked
    listed: int  # how many settings reached the target within the tolerance


def near_target(problem: Problem, target: Target, tolerance: float) -> list[Candidate]:
    """Every setting whose prediction reaches ``target`` by at most ``tolerance · target.value``, one per
    distinct set of switch steps, most large-step equivalents first (then the slowest)."""
    if tolerance < 0:
        raise ConfigError("--tolerance", f"must be at least 0, got {tolerance:g}")
    seen: dict[tuple, Candidate] = {}
    for values, summary in reaching(problem, target, lambda: tolerance * target.value):
        seen.setdefault(summary.transitions, Candidate(values=values, summary=summary))
    if not seen:
        raise out_of_reach(problem, target)
    return sorted(seen.values(), key=lambda c: (-c.summary.large_step_equivalents, c.summary.speedup))


def best_at_target(problem: Problem, setup, target: Target, metric: str, *, count: int = 4,
                   tolerance: float = 0.1) -> Best:
    """Generate the ``count`` most promising settings near ``target`` and keep the best by ``metric``."""
    if count < 1:
        raise ConfigError("--candidates", f"must be at least 1, got {count}")
    better = _metric(setup.config, metric).higher_is_better  # checked before anything is generated
    listed = near_target(problem, target, tolerance)
    policy = problem.build(listed[0].values)  # its stages and measures, for the forced runs
    large = [setup.generate(u, "large", output_type="pil").images[0] for u in setup.units]
    scored = []
    for candidate in listed[:count]:
        images = [(unit[0], setup.generate(unit, scheduled_like(policy, transitions), output_type="pil").images[0])
                  for unit, transitions in zip(setup.units, candidate.summary.transitions)]
        scored.append(attrs.evolve(candidate, score=metric_score(setup.config, metric, images, large)))
    chosen = (max if better else min)(scored, key=lambda c: c.score)
    return Best(chosen=chosen, candidates=tuple(scored), listed=len(listed))
