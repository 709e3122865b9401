"""Calibration to a target on synthetic D_t traces: the search against brute force and the hand formulas."""

from itertools import product

import pytest

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import Costs
from stitchkit.masks import mask_size
from stitchkit.policies.hybridstitch import HybridStitch
from stitchkit.policies.srdiffusion import SRDiffusion
from stitchkit.policies.tstitch import TStitch
from stitchkit.calibration.replay import TraceStore, replay, summarize
from stitchkit.calibration.target import Problem, Target, knobs_of, midpoints, search, shortest

STEPS, TOKENS, UNITS = 10, 64, (0, 1, 2, 3)
COSTS = Costs(large_ms=10.0, small_ms=3.0)


def stage0(u, i):
    """Large-only D handed at step i (None at step 0)."""
    return None if i == 0 else round((0.9 - 0.07 * i) * (1 + 0.05 * u), 6)


def hybrid(u, t1, i):
    """D handed at step i > t1 in the hybrid stage entered at t1: depends on when it was entered."""
    return round(0.25 - 0.03 * (i - t1) + 0.01 * u + 0.005 * t1, 6)


def record(unit, prefix):
    assert len(prefix) <= 1, "the small stage is never recorded"
    if not prefix:
        return [stage0(unit, i) for i in range(STEPS)]
    t1 = prefix[0]
    return [stage0(unit, i) if i <= t1 else hybrid(unit, t1, i) for i in range(STEPS)]


def hs_problem(**kw):
    store = TraceStore(record)
    return Problem(build=lambda v: HybridStitch(thresholds=tuple(v), mask_ratios=(0.3,)),
                   knobs=knobs_of(HybridStitch()), store=store, units=UNITS, num_steps=STEPS, num_tokens=TOKENS,
                   costs=COSTS, **kw)


def by_hand(u, t1, t2):
    """Algorithm 1 lines 19-22 read off the synthetic sequences: (T_1, T_2)."""
    T1 = next((i for i in range(STEPS) if stage0(u, i) is not None and stage0(u, i) < t1), None)
    if T1 is None:
        return ()
    T2 = next((i for i in range(T1 + 1, STEPS) if hybrid(u, T1, i) < t2), None)
    return (T1,) if T2 is None else (T1, T2)


def test_replay_follows_the_rule_and_prices_eq_3_to_6_by_hand():
    store = TraceStore(record)
    policy = HybridStitch(thresholds=(0.6, 0.25), mask_ratios=(0.3,))
    k = mask_size(0.3, TOKENS)  # 19 of 64 tokens
    for u in UNITS:
        r = replay(policy, store, u, num_steps=STEPS, num_tokens=TOKENS)
        assert r.transitions == by_hand(u, 0.6, 0.25) and len(r.transitions) == 2
        t1, t2 = r.transitions
        hand_ms = t1 * 10.0 + (t2 - t1) * (10.0 * k / TOKENS + 3.0) + (STEPS - t2) * 3.0
        assert summarize([r], COSTS).speedup == pytest.approx(STEPS * 10.0 / hand_ms)
        assert r.large_step_equivalents == pytest.approx(t1 + (t2 - t1) * k / TOKENS)


def all_values():
    """Every D the synthetic runs can hand over, for any entry step: the brute force's grid."""
    values = [stage0(u, i) for u in UNITS for i in range(1, STEPS)]
    values += [hybrid(u, t1, i) for u in UNITS for t1 in range(STEPS) for i in range(t1 + 1, STEPS)]
    return midpoints(values)


def brute_force(problem, target):
    grid = all_values()
    best = None
    for a, b in product(grid, grid):
        if not (0 < b < a):
            continue
        s = problem.summary((a, b))
        if target.excess(s) >= 0 and (best is None or target.excess(s) < best):
            best = target.excess(s)
    return best


@pytest.mark.parametrize("target", [Target(kind="speedup", value=1.8), Target(kind="speedup", value=2.3),
                                    Target(kind="large_steps", value=5.0)])
def test_search_finds_the_smallest_reaching_the_target_as_brute_force_does(target):
    problem = hs_problem(max_candidates=None)
    found = search(problem, target)
    assert target.excess(found.summary) >= 0
    assert target.excess(found.summary) == pytest.approx(brute_force(hs_problem(), target), abs=1e-12)
    assert found.values[0] > found.values[1] > 0  # strictly decreasing
    # a real replay of the printed (rounded) values lands on the same prediction
    rounded = shortest(problem, found.values)
    assert problem.summary(rounded).speedup == pytest.approx(found.summary.speedup)
    # fewer runs than the brute force's grid: one large-only run per unit plus one per entry step used
    assert found.runs <= len(UNITS) * (STEPS + 1)


def test_out_of_reach_is_one_line():
    with pytest.raises(ConfigError, match=r"^--target-speedup: 50 is out of reach for this method on these runs; "
                                          r"the fastest candidate predicts \d"):
        search(hs_problem(), Target(kind="speedup", value=50.0))


def sr_record(unit, prefix):
    return [stage0(unit, i) for i in range(STEPS)]


@pytest.mark.parametrize("rule", ["fastvideo", "xdit", "paper"])
def test_srdiffusion_threshold_against_brute_force(rule):
    store = TraceStore(sr_record)
    base = dict(rule=rule, min_switch_step=2, max_switch_step=None)
    problem = Problem(build=lambda v: SRDiffusion(threshold=v[0], **base), knobs=knobs_of(SRDiffusion()),
                      store=store, units=UNITS, num_steps=STEPS, num_tokens=TOKENS, costs=COSTS,
                      max_candidates=None)
    target = Target(kind="speedup", value=1.5)
    found = search(problem, target)
    import numpy as np

    d = [stage0(u, i) for u in UNITS for i in range(1, STEPS)]
    t = np.tanh(d)
    grid = [g for g in midpoints(list(d) + [abs(x) for x in np.diff(t)]) + list(np.geomspace(1e-5, 2, 400))
            if g > 0]
    excesses = [target.excess(problem.summary((g,))) for g in grid]
    assert target.excess(found.summary) == pytest.approx(min(e for e in excesses if e >= 0), abs=1e-12)


def test_tstitch_small_fraction_needs_no_runs():
    store = TraceStore(lambda u, p: pytest.fail("T-Stitch reads no D_t"))
    problem = Problem(build=lambda v: TStitch(small_fraction=v[0]), knobs=knobs_of(TStitch()), store=store,
                      units=UNITS, num_steps=10, num_tokens=TOKENS, costs=COSTS)
    found = search(problem, Target(kind="speedup", value=1.4))
    # k small steps cost 10 * 10 / ((10 - k) * 10 + k * 3): k = 4 gives 1.3889, k = 5 gives 1.5385
    assert found.summary.speedup == pytest.approx(100 / 65)
    assert found.values == (0.55,)


def test_knobs_of_refuses_a_method_without_thresholds():
    from stitchkit.policies.baselines import Large

    with pytest.raises(ConfigError, match="^--method: Large has no threshold to calibrate"):
        knobs_of(Large())
