"""`stitchkit plan EXPERIMENT.yaml`: every method priced by the latency model, hand-checked."""

import textwrap

import pytest

from stitchkit.cost.latency import Costs
from stitchkit.experiments.plan import plan_from_records, plan_method
from stitchkit.registry import get_registry

COSTS = Costs(large_ms=10.0, small_ms=2.0)


def _policy(spec):
    return get_registry(entry_points=False).create("switch", spec)[0]


def test_fixed_schedules_are_priced_exactly():
    (large,) = plan_method(_policy("large"), "large", 10, 64, COSTS)
    assert large.basis == "fixed schedule" and large.prediction.predicted_ms == 100.0
    (ts,) = plan_method(_policy("t-stitch"), "t-stitch", 10, 64, COSTS)
    # small while (i+1)/10 <= 0.4: steps 0-3 small (4 x 2 ms), 6 large steps (60 ms)
    assert ts.switch_steps == (4,) and ts.prediction.predicted_ms == pytest.approx(68.0)


def test_adaptive_policies_are_priced_per_plausible_first_switch():
    plans = plan_method(_policy("hybridstitch-30"), "hs", 10, 64, COSTS)
    first = plans[0]  # first switch at step 1; the hybrid and small stages share the other 9 steps (4 + 5)
    assert first.switch_steps == (1, 5)
    # 1 large (10) + 4 hybrid (0.3*10 + 2 each) + 5 small (2 each)
    assert first.prediction.predicted_ms == pytest.approx(10 + 4 * 5 + 5 * 2)
    speedups = [p.prediction.speedup for p in plans]
    assert speedups == sorted(speedups, reverse=True)  # later switches save less
    full = plan_method(_policy("hybridstitch-30"), "fl", 10, 64, COSTS, full_large=True)[0]
    assert full.prediction.predicted_ms == pytest.approx(10 + 4 * 12 + 5 * 2)


def test_a_small_corrector_is_planned_at_both_ends_of_its_anchors():
    policy = _policy({"kind": "small-corrector", "max_skip": 3, "large_head": 0.2})
    slow, fast = plan_method(policy, "corrector", 20, 64, COSTS)
    # Every step an anchor: both models on all 20 steps.
    assert slow.basis == "an anchor every step" and slow.prediction.predicted_ms == pytest.approx(20 * 12)
    # No change: anchors at steps 0-3 (the 20 % head), then three skipped in a row (max_skip) and an anchor,
    # four times (anchors at 7, 11, 15, 19): 8 large steps, the small model on all 20.
    assert fast.basis == "fewest anchors (no change)" and fast.prediction.predicted_ms == pytest.approx(8 * 10 + 20 * 2)
    assert fast.prediction.speedup == pytest.approx(200 / 120)


def test_recorded_traces_are_priced_as_they_ran():
    trace = [{"mask_ratio": 1.0, "small_tokens": 0}, {"mask_ratio": 0.25, "small_tokens": 64},
             {"mask_ratio": 0.0, "small_tokens": 64}]
    plan = plan_from_records("hs", [{"trace": trace}, {"trace": trace}], COSTS)
    assert plan.basis == "2 run traces" and plan.prediction.predicted_ms == pytest.approx(10 + 2.5 + 2 + 2)


def test_cli_prints_every_method(tmp_path, capsys, monkeypatch):
    from stitchkit.cli import main

    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "empty-cache"))  # no profile: the FLOPs estimate
    exp = tmp_path / "e.yaml"
    exp.write_text(textwrap.dedent("""
        sampler: {steps: 10, height: 64, width: 64, max_sequence_length: 8}
        prompts: [x]
        methods: [large, t-stitch, hybridstitch-30, fulllarge-30]
        output: out
    """))
    assert main(["plan", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "FLOPs estimate" in out and "t-stitch" in out and "first switch at step 1" in out
    assert out.count("fulllarge-30") == 6
