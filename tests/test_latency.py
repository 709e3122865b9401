"""The analytical latency model (stitchkit.cost.latency): Eq. 3-8 against brute-force per-step sums."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys
import warnings

import attrs
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import stitchkit.cost.latency
from stitchkit.errors import ConfigError
from stitchkit.cost.latency import (
    Costs,
    Plan,
    UnprofitablePlanWarning,
    check_profitable,
    masked_cost,
    plan_steps,
    predict,
    predict_from_steps,
    validate_costs,
    validate_plan,
)

# ------------------------------------------------------------------------------------------- strategies


@st.composite
def plans(draw, max_steps: int = 60, max_masks: int = 4) -> Plan:
    """A valid plan: 0 < T_1 < … < T_{n+1} <= T and falling ratios in (0, 1)."""
    steps = draw(st.integers(1, max_steps))
    n = draw(st.integers(0, min(max_masks, steps - 1)))
    switch = sorted(draw(st.sets(st.integers(1, steps), min_size=n + 1, max_size=n + 1)))
    ratios = draw(st.lists(st.floats(0.01, 0.99), min_size=n, max_size=n, unique=True))
    return Plan(steps=steps, switch_steps=switch, mask_ratios=sorted(ratios, reverse=True))


@st.composite
def profiles(draw, large_ms: float) -> tuple[tuple[float, float], ...]:
    """A masked-cost profile that rises with M and stays below L_l (as real ones do)."""
    ratios = sorted(draw(st.lists(st.floats(0.05, 0.95), min_size=1, max_size=6, unique=True)))
    shares = sorted(draw(st.lists(st.floats(0.01, 0.99), min_size=len(ratios), max_size=len(ratios))))
    return tuple((r, large_ms * s) for r, s in zip(ratios, shares))


costs_st = st.builds(
    lambda large, share: Costs(large_ms=large, small_ms=large * share),
    st.floats(0.1, 1000.0),
    st.floats(0.01, 2.0),
)


def brute_force(plan: Plan, costs: Costs) -> tuple[float, float]:
    """Step by step: the large model's and the small model's total time, written from the stage picture."""
    t = plan.switch_steps
    large = small = 0.0
    for step in range(plan.steps):
        if step < t[0]:  # large alone, all tokens (M_0 = 1)
            large += costs.large_ms
        elif step >= t[-1]:  # small alone
            small += costs.small_ms
        else:  # hybrid stage i: T_i <= step < T_{i+1}, ratio M_i
            i = max(k for k in range(len(t)) if t[k] <= step)
            large += costs.large_ms * plan.mask_ratios[i]
            small += costs.small_ms
    return large, small


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ------------------------------------------------------------------------------------------ Eq. 3-5


def test_docstring_example():
    assert doctest.testmod(stitchkit.cost.latency).failed == 0


def test_worked_example_by_hand():
    # T = 50, switches at 10, 30, 40 with M = 0.4, 0.2: 10 large, 20 at 0.4, 10 at 0.2, 10 small.
    plan = Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.4, 0.2))
    p = predict(plan, Costs(large_ms=10, small_ms=2.5))
    assert p.large_only_ms == 500.0
    assert p.hybrid_large_ms == pytest.approx(10 * 10 + 20 * 10 * 0.4 + 10 * 10 * 0.2)  # Eq. 3
    assert p.hybrid_small_ms == pytest.approx(2.5 * (50 - 10))  # Eq. 4
    assert p.saving_ms == pytest.approx(500 - 200 - 100)  # Eq. 5 with T · L_l
    assert p.speedup == pytest.approx(500 / 300)
    assert not p.refined and p.refined_speedup is None


@given(plan=plans(), costs=costs_st)
def test_eq3_to_eq5_match_a_brute_force_sum(plan, costs):
    large, small = brute_force(plan, costs)
    p = predict(plan, costs)
    note(f"{p}")
    assert close(p.hybrid_large_ms, large)
    assert close(p.hybrid_small_ms, small)
    assert close(p.predicted_ms, large + small)
    assert close(p.large_only_ms, plan.steps * costs.large_ms)
    assert close(p.saving_ms, plan.steps * costs.large_ms - large - small)
    assert close(p.speedup, plan.steps * costs.large_ms / (large + small))


@given(plan=plans(), costs=costs_st, data=st.data())
def test_predict_from_steps_agrees_with_predict(plan, costs, data):
    costs = attrs.evolve(costs, masked_ms=data.draw(profiles(costs.large_ms)))
    steps = plan_steps(plan)
    assert len(steps) == plan.steps
    a, b = predict(plan, costs), predict_from_steps(steps, costs)
    for field in attrs.fields(type(a)):
        assert close(getattr(a, field.name), getattr(b, field.name)), field.name


@given(plan=plans(), costs=costs_st, data=st.data())
def test_refined_model_is_a_per_step_sum_of_the_profiled_cost(plan, costs, data):
    costs = attrs.evolve(costs, masked_ms=data.draw(profiles(costs.large_ms)))
    expected = sum(costs.large_ms if f == 1.0 else (masked_cost(f, costs) if f else 0.0)
                   for f, _ in plan_steps(plan))
    p = predict(plan, costs)
    assert close(p.refined_hybrid_large_ms, expected)
    assert close(p.refined_predicted_ms, expected + p.hybrid_small_ms)
    assert close(p.refined_saving_ms, p.large_only_ms - p.refined_predicted_ms)
    # The small model's share is the same in both models.
    assert p.hybrid_small_ms == predict(plan, attrs.evolve(costs, masked_ms=())).hybrid_small_ms


def test_trace_style_steps():
    # What a trace yields: large_tokens / N and whether the small model ran.
    steps = [(1.0, False), (1.0, False), (0.25, True), (0.25, True), (0.0, True)]
    p = predict_from_steps(steps, Costs(large_ms=8, small_ms=2))
    assert p.large_only_ms == 40
    assert p.hybrid_large_ms == 16 + 4
    assert p.hybrid_small_ms == 6
    assert p.predicted_ms == 26


@pytest.mark.parametrize(
    "steps, path", [([(1.5, False)], "steps[0]"), ([(1.0, False), (-0.5, False)], "steps[1]")]
)
def test_predict_from_steps_refuses_impossible_steps(steps, path):
    with pytest.raises(ConfigError) as info:
        predict_from_steps(steps, Costs(large_ms=8, small_ms=2))
    assert info.value.path == path


def test_a_step_where_neither_model_ran_is_a_reused_prediction_and_free():
    """(Was refused before reuse existed: a step may now reuse the previous prediction, no model call.)"""
    p = predict_from_steps([(1.0, False), (0.0, False)], Costs(large_ms=8, small_ms=2))
    assert (p.large_only_ms, p.predicted_ms) == (16, 8)


# -------------------------------------------------------------------------- speedup and monotonicity


@given(plan=plans(), large=st.floats(0.1, 1000.0), share=st.floats(0.001, 0.999))
def test_every_step_saving_means_speedup_above_one(plan, large, share):
    """If every hybrid step costs less than a large step (Eq. 6 for every M_i; with falling ratios that is
    Eq. 7) and a small step does too, and some step is not a large step, the plan is faster."""
    if plan.switch_steps[0] == plan.steps:  # only large steps: nothing to save, speedup exactly 1
        assert predict(plan, Costs(large_ms=large, small_ms=large * share)).speedup == pytest.approx(1.0)
        return
    bound = 1.0 - plan.mask_ratios[0] if plan.mask_ratios else 1.0  # Eq. 7: L_s < L_l (1 − M_1)
    costs = Costs(large_ms=large, small_ms=large * bound * share)
    assert all(costs.large_ms * m + costs.small_ms < costs.large_ms for m in plan.mask_ratios)  # Eq. 6
    check_profitable(plan, costs)  # the library agrees the plan pays off
    p = predict(plan, costs)
    assert p.speedup > 1.0
    assert p.saving_ms > 0.0


@given(plan=plans(), costs=costs_st)
def test_speedup_above_one_exactly_when_the_per_step_savings_sum_above_zero(plan, costs):
    p = predict(plan, costs)
    per_step = [costs.large_ms - (costs.large_ms * f + (costs.small_ms if ran else 0.0))
                for f, ran in plan_steps(plan)]
    assert close(sum(per_step), p.saving_ms)
    if abs(p.saving_ms) > 1e-9 * p.large_only_ms:
        assert (p.speedup > 1.0) == (p.saving_ms > 0.0) == (sum(per_step) > 0.0)


def test_speedup_above_one_does_not_need_every_step_to_save():
    """The converse is false: a hybrid stage that breaks Eq. 6 can hide behind cheap small-only steps."""
    plan = Plan(steps=20, switch_steps=(2, 4), mask_ratios=(0.9,))
    costs = Costs(large_ms=10, small_ms=2)  # a hybrid step at 0.9 costs 11 ms > 10 ms
    assert costs.large_ms * 0.9 + costs.small_ms > costs.large_ms
    assert predict(plan, costs).speedup > 1.0
    with pytest.raises(ConfigError, match="breaks Eq. 7"):
        check_profitable(plan, costs)


@given(plan=plans(max_masks=4), costs=costs_st, data=st.data())
def test_speedup_falls_as_a_mask_ratio_grows(plan, costs, data):
    if not plan.mask_ratios:
        return
    i = data.draw(st.integers(0, len(plan.mask_ratios) - 1))
    bigger = data.draw(st.floats(plan.mask_ratios[i], 0.999))
    grown = attrs.evolve(plan, mask_ratios=[*plan.mask_ratios[:i], bigger, *plan.mask_ratios[i + 1:]])
    note(f"M_{i + 1}: {plan.mask_ratios[i]} -> {bigger}")
    assert predict(grown, costs).speedup <= predict(plan, costs).speedup
    # The refined model too, with a profile whose cost rises with M.
    profiled = attrs.evolve(costs, masked_ms=data.draw(profiles(costs.large_ms)))
    assert predict(grown, profiled).refined_speedup <= predict(plan, profiled).refined_speedup


# ----------------------------------------------------------------------------------- the masked cost


def test_masked_cost_without_profile_is_the_papers():
    costs = Costs(large_ms=10, small_ms=1)
    assert masked_cost(0.3, costs) == pytest.approx(3.0)
    assert masked_cost(1.0, costs) == 10.0
    assert masked_cost(0.0, costs) == 0.0


def test_masked_cost_interpolates_and_extrapolates():
    costs = Costs(large_ms=10, small_ms=1, masked_ms=[(0.4, 5.0), (0.2, 3.0)])  # sorted on the way in
    assert costs.masked_ms == ((0.2, 3.0), (0.4, 5.0))
    assert masked_cost(0.2, costs) == pytest.approx(3.0)
    assert masked_cost(0.3, costs) == pytest.approx(4.0)
    assert masked_cost(0.7, costs) == pytest.approx(7.5)  # between (0.4, 5) and (1, L_l = 10)
    assert masked_cost(1.0, costs) == 10.0
    assert masked_cost(0.1, costs) == pytest.approx(2.0)  # the first segment's line, extended
    assert masked_cost(0.01, costs) == pytest.approx(1.1)  # toward its intercept of 1 ms (the fixed floor)
    # A profile whose first segment is steep: the line would go negative; held at 0.
    steep = Costs(large_ms=10, small_ms=1, masked_ms=[(0.5, 1.0), (0.6, 9.0)])
    assert masked_cost(0.1, steep) == 0.0
    # A noisy profile that falls: held at the smallest measurement, never above it.
    noisy = Costs(large_ms=10, small_ms=1, masked_ms=[(0.1, 3.0), (0.2, 2.0)])
    assert masked_cost(0.05, noisy) == pytest.approx(3.0)
    # One point: the line through it and (1, L_l).
    one = Costs(large_ms=10, small_ms=1, masked_ms=[(0.5, 6.0)])
    assert masked_cost(0.25, one) == pytest.approx(4.0)


@given(costs=costs_st, data=st.data(), a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_masked_cost_rises_with_the_ratio_for_a_rising_profile(costs, data, a, b):
    costs = attrs.evolve(costs, masked_ms=data.draw(profiles(costs.large_ms)))
    lo, hi = sorted((a, b))
    assert 0.0 <= masked_cost(lo, costs) <= masked_cost(hi, costs) <= costs.large_ms


# -------------------------------------------------------------------------------------- validation

L = Costs(large_ms=10, small_ms=2.5)  # Eq. 7 bound: 1 − 2.5/10 = 0.75
RISE = "switch steps must rise strictly: 0 < T_1 < … < T_{n+1} <= steps = 50"
SHARE = "a mask ratio is the fraction of image tokens the large model recomputes"


@pytest.mark.parametrize(
    "plan, message",
    [
        (Plan(steps=0, switch_steps=(1,), mask_ratios=()),
         "steps: 0 is not a step count; must be a whole number of at least 1"),
        (Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.4,)),
         "switch_steps: 3 switch steps for 1 mask ratio; Eq. 3 needs one more switch step than mask ratios "
         "(T_1 … T_{n+1} for M_1 … M_n): 2 here"),
        (Plan(steps=50, switch_steps=(0, 30), mask_ratios=(0.4,)),
         f"switch_steps[0]: 0 is not above 0; {RISE}"),
        (Plan(steps=50, switch_steps=(30, 30), mask_ratios=(0.4,)),
         f"switch_steps[1]: 30 is not above switch_steps[0] = 30; {RISE}"),
        (Plan(steps=50, switch_steps=(30, 20), mask_ratios=(0.4,)),
         f"switch_steps[1]: 20 is not above switch_steps[0] = 30; {RISE}"),
        (Plan(steps=50, switch_steps=(10, 51), mask_ratios=(0.4,)),
         f"switch_steps[1]: 51 is past the last step (steps = 50); {RISE}"),
        (Plan(steps=50, switch_steps=(10, 20.5), mask_ratios=(0.4,)),
         "switch_steps[1]: 20.5 is not a step index; must be a whole number"),
        (Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.4, 1.0)),
         f"mask_ratios[1]: 1 is outside (0, 1); {SHARE}"),
        (Plan(steps=50, switch_steps=(10, 30), mask_ratios=(0.0,)),
         f"mask_ratios[0]: 0 is outside (0, 1); {SHARE}"),
    ],
)
def test_validate_plan_refusals(plan, message):
    with pytest.raises(ConfigError) as info:
        validate_plan(plan, L)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "costs, path",
    [
        (Costs(large_ms=0, small_ms=1), "large_ms"),
        (Costs(large_ms=10, small_ms=float("nan")), "small_ms"),
        (Costs(large_ms=10, small_ms=1, masked_ms=[(1.0, 5.0)]), "masked_ms[0]"),
        (Costs(large_ms=10, small_ms=1, masked_ms=[(0.2, 2.0), (0.2, 3.0)]), "masked_ms[1]"),
        (Costs(large_ms=10, small_ms=1, masked_ms=[(0.2, -1.0)]), "masked_ms[0]"),
    ],
)
def test_validate_costs_refusals(costs, path):
    with pytest.raises(ConfigError) as info:
        validate_costs(costs)
    assert info.value.path == path and "\n" not in str(info.value)


@given(
    steps=st.integers(-2, 60),
    switch=st.lists(st.one_of(st.integers(-2, 70), st.floats(-1, 70)), max_size=5),
    ratios=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    costs=costs_st,
)
def test_every_refusal_is_one_line(steps, switch, ratios, costs):
    plan = Plan(steps=steps, switch_steps=switch, mask_ratios=ratios)
    try:
        validate_plan(plan, costs)
        check_profitable(plan, costs)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(e.path + ": ")
    else:
        predict(plan, costs)  # a plan that passes can be priced


def test_validate_plan_accepts_a_plan_without_a_small_only_stage():
    validate_plan(Plan(steps=50, switch_steps=(10, 50), mask_ratios=(0.4,)), L)


# ------------------------------------------------------------------------------------- Eq. 6-8 checks


def test_eq7_refusal_line():
    plan = Plan(steps=50, switch_steps=(10, 30), mask_ratios=(0.8,))
    validate_plan(plan, L)
    with pytest.raises(ConfigError) as info:
        check_profitable(plan, L)
    assert str(info.value) == "mask_ratios[0]: 0.8 breaks Eq. 7; it must be below 1 − Ls/Ll = 0.75"


@pytest.mark.parametrize("ratios", [(0.2, 0.4), (0.3, 0.3)])
def test_eq8_refusal_line(ratios):
    plan = Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=ratios)
    with pytest.raises(ConfigError) as info:
        check_profitable(plan, L)
    assert str(info.value) == (
        f"mask_ratios[1]: {ratios[1]:g} breaks Eq. 8; it must be below mask_ratios[0] = {ratios[0]:g}")


def test_eq6_with_the_profiled_masked_cost():
    # The paper's model says 0.5 is fine (bound 0.75); the profile: a step at 0.5 costs 8 + 2.5 ms > 10.
    costs = attrs.evolve(L, masked_ms=[(0.1, 3.0), (0.5, 8.0)])
    plan = Plan(steps=50, switch_steps=(10, 30), mask_ratios=(0.5,))
    check_profitable(plan, L)
    with pytest.raises(ConfigError) as info:
        check_profitable(plan, costs)
    assert str(info.value) == (
        "mask_ratios[0]: 0.5 breaks Eq. 6 with the profiled masked cost; "
        "Ll(0.5) + Ls = 10.5 ms must be below Ll = 10 ms"
    )


def test_small_only_plan_needs_a_cheaper_small_model():
    plan = Plan(steps=10, switch_steps=(5,), mask_ratios=())
    check_profitable(plan, L)
    with pytest.raises(ConfigError, match="^small_ms: 12 breaks Eq. 6"):
        check_profitable(plan, Costs(large_ms=10, small_ms=12))


def test_allow_unprofitable_warns_instead():
    plan = Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.8, 0.9))
    with pytest.warns(UnprofitablePlanWarning) as record:
        breaches = check_profitable(plan, L, allow_unprofitable=True)
    assert [str(w.message) for w in record] == list(breaches)
    assert [b.split(":")[0] for b in breaches] == ["mask_ratios[0]", "mask_ratios[1]"]
    assert "Eq. 7" in breaches[0] and "Eq. 8" in breaches[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_profitable(Plan(steps=50, switch_steps=(10, 30), mask_ratios=(0.4,)), L) == ()


# ------------------------------------------------------------------------------------------- plumbing


def test_costs_round_trip_and_prediction_keys():
    costs = Costs(large_ms=10, small_ms=2, masked_ms={0.2: 3.0, 0.1: 2.0}, source="profile")
    assert Costs.from_dict(costs.to_dict()) == costs
    plan = Plan(steps=20, switch_steps=(5, 15), mask_ratios=(0.3,))
    assert set(predict(plan, attrs.evolve(costs, masked_ms=())).to_dict()) == {
        "large_only_ms", "hybrid_large_ms", "hybrid_small_ms", "predicted_ms", "saving_ms", "speedup"}
    assert {"refined_predicted_ms", "refined_speedup"} <= set(predict(plan, costs).to_dict())


def test_latency_does_not_import_torch():
    code = "import sys, stitchkit.cost.latency; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
