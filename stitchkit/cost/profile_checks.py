"""Is a measured profile believable? Sanity checks before it is cached and used to price every later run.

A profile taken while other work competes for the CPU is not just slow but wrong in shape: repeated calls
disagree, and a masked step on more tokens can come out cheaper than one on fewer. Cached, such a profile
mispriced every later run of the pair (prediction errors of +277 % to +649 % in issue 15) with nothing
hinting at a refresh. :func:`check_profile` names what is wrong; :func:`measure_checked` measures again
(up to ``attempts`` times) until the profile passes, and returns the problems that remain so the caller can
refuse to cache it (``stitchkit profile``) or use it with a warning (``stitchkit run``).
"""

from __future__ import annotations

import statistics
from typing import Callable

from stitchkit.cost.latency import Costs

__all__ = ["MAX_SPREAD", "MONOTONE_TOLERANCE", "check_profile", "measure_checked", "spread"]

#: Largest accepted spread of repeated timings of one quantity (see :func:`spread`).
MAX_SPREAD = 0.5
#: A masked step on more tokens may come out at most this share cheaper than one on fewer (timer noise).
MONOTONE_TOLERANCE = 0.15


def spread(times: list[float]) -> float:
    """``(second largest - second smallest) / median`` of repeated timings: the spread with the single most
    extreme call at each end left out (a first call paying for a page fault is not noise); 0 under 4 calls
    but for the plain range over the median with 2-3 calls."""
    if len(times) < 2:
        return 0.0
    ordered = sorted(times)
    low, high = (ordered[1], ordered[-2]) if len(ordered) >= 4 else (ordered[0], ordered[-1])
    return (high - low) / statistics.median(ordered)


def check_profile(costs: Costs, timings: dict[str, list[float]] | None = None, *,
                  max_spread: float = MAX_SPREAD, tolerance: float = MONOTONE_TOLERANCE) -> list[str]:
    """What is wrong with a measured profile, one short phrase each; empty when it looks sane.

    * the masked cost ``L_l(M)`` must not fall as ``M`` grows (beyond ``tolerance``): more tokens are more
      work, so a fall means the timings were disturbed;
    * repeated timings of one quantity must agree: :func:`spread` at most ``max_spread``.
    """
    problems = []
    masked = sorted(costs.masked_ms)
    for (r1, ms1), (r2, ms2) in zip(masked, masked[1:]):
        if ms2 < ms1 * (1.0 - tolerance):
            problems.append(f"masked cost falls from {ms1:.3g} ms at M={r1:g} to {ms2:.3g} ms at M={r2:g}")
    for name, times in (timings or {}).items():
        s = spread(times)
        if s > max_spread:
            problems.append(f"repeated {name} timings disagree (spread {100 * s:.0f} % of the median)")
    return problems


def measure_checked(measure: Callable[[dict[str, list[float]]], Costs], *, attempts: int = 3,
                    **limits: float) -> tuple[Costs, list[str]]:
    """``measure(timings)`` until :func:`check_profile` passes, at most ``attempts`` times; the last costs
    and their remaining problems (empty: the profile can be trusted)."""
    costs, problems = None, []
    for _ in range(max(1, attempts)):
        timings: dict[str, list[float]] = {}
        costs = measure(timings)
        problems = check_profile(costs, timings, **limits)
        if not problems:
            break
    assert costs is not None
    return costs, problems
