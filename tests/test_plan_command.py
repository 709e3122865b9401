"""`stitchkit plan`: the click command on its own, and through the installed `stitchkit` script."""

from __future__ import annotations

import json
import subprocess

import click
import pytest
from click.testing import CliRunner

from stitchkit.commands import plan as plan_module
from stitchkit.errors import ConfigError

BASE = ["--large-ms", "10", "--small-ms", "2.5", "--steps", "50"]
GOOD = [*BASE, "--switch-steps", "10,30,40", "--mask-ratios", "0.4,0.2"]


def invoke(args):
    return CliRunner().invoke(plan_module.command, args)


def test_command_object():
    assert isinstance(plan_module.command, click.Command)
    assert plan_module.command.name == "plan"


def test_prints_the_six_numbers():
    result = invoke(GOOD)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "steps 0-9: large (10 steps)" in result.output
    assert "steps 40-49: small (10 steps)" in result.output
    expected = {
        "large-only ms:": "500.00", "hybrid large ms:": "200.00", "hybrid small ms:": "100.00",
        "predicted ms:": "300.00", "saving ms:": "200.00", "speedup:": "1.667x",
    }
    for label, value in expected.items():
        assert any(line.startswith(label) and value in line for line in lines), (label, result.output)


def test_json_last_line():
    result = invoke([*GOOD, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.splitlines()[-1])
    assert data == pytest.approx({
        "large_only_ms": 500.0, "hybrid_large_ms": 200.0, "hybrid_small_ms": 100.0,
        "predicted_ms": 300.0, "saving_ms": 200.0, "speedup": 500 / 300,
    })


def test_masked_ms_adds_the_refined_prediction():
    result = invoke([*GOOD, "--masked-ms", "0.2:3,0.4:5", "--json"])
    assert result.exit_code == 0, result.output
    assert "refined model" in result.output
    data = json.loads(result.output.splitlines()[-1])
    # 10 large steps, 20 at Ll(0.4) = 5, 10 at Ll(0.2) = 3.
    assert data["refined_hybrid_large_ms"] == pytest.approx(100 + 20 * 5 + 10 * 3)
    assert data["refined_predicted_ms"] == pytest.approx(230 + 100)


def test_no_mask_ratios_is_a_large_then_small_plan():
    result = invoke([*BASE, "--switch-steps", "30", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["predicted_ms"] == pytest.approx(300 + 50)


REFUSALS = [
    (["--mask-ratios", "0.8,0.2", "--switch-steps", "10,30,40"],
     "mask_ratios[0]: 0.8 breaks Eq. 7; it must be below 1 − Ls/Ll = 0.75"),
    (["--mask-ratios", "0.4,0.5", "--switch-steps", "10,30,40"],
     "mask_ratios[1]: 0.5 breaks Eq. 8; it must be below mask_ratios[0] = 0.4"),
    (["--mask-ratios", "0.4,0.2", "--switch-steps", "10,30,30"],
     "switch_steps[2]: 30 is not above switch_steps[1] = 30; switch steps must rise strictly: "
     "0 < T_1 < … < T_{n+1} <= steps = 50"),
    (["--mask-ratios", "0.4,0.2", "--switch-steps", "10,30,60"],
     "switch_steps[2]: 60 is past the last step (steps = 50); switch steps must rise strictly: "
     "0 < T_1 < … < T_{n+1} <= steps = 50"),
    (["--mask-ratios", "0.4", "--switch-steps", "10,30,40"],
     "switch_steps: 3 switch steps for 1 mask ratio; Eq. 3 needs one more switch step than mask ratios "
     "(T_1 … T_{n+1} for M_1 … M_n): 2 here"),
    (["--mask-ratios", "1.5,0.2", "--switch-steps", "10,30,40"],
     "mask_ratios[0]: 1.5 is outside (0, 1); "
     "a mask ratio is the fraction of image tokens the large model recomputes"),
    (["--mask-ratios", "0.4,x", "--switch-steps", "10,30,40"],
     "--mask-ratios: 'x' is not a number; give a number such as 12.5"),
    (["--mask-ratios", "0.4,0.2", "--switch-steps", "10,,40"],
     "--switch-steps: item 2 of '10,,40' is empty; give a comma-separated list"),
    (["--mask-ratios", "0.4,0.2", "--switch-steps", "10,3.5,40"],
     "--switch-steps: '3.5' is not a whole number; give a whole number such as 50"),
]


@pytest.mark.parametrize("extra, message", REFUSALS, ids=[f"refusal-{i}" for i in range(len(REFUSALS))])
def test_refusals_are_one_config_error_line(extra, message):
    result = invoke([*BASE, *extra])
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception) == message
    assert result.output == ""  # nothing printed before the refusal


def test_bad_numbers_in_costs():
    result = invoke(["--large-ms", "fast", "--small-ms", "2.5", "--steps", "50", "--switch-steps", "10"])
    assert str(result.exception) == "--large-ms: 'fast' is not a number; give a number such as 12.5"
    result = invoke(["--large-ms", "10", "--small-ms", "0", "--steps", "50", "--switch-steps", "10"])
    assert str(result.exception) == "small_ms: 0 is not a latency; must be a finite number of ms above 0"


def test_allow_unprofitable_prints_and_warns():
    result = invoke([*BASE, "--switch-steps", "10,30", "--mask-ratios", "0.9", "--allow-unprofitable",
                     "--json"])
    assert result.exit_code == 0, result.output
    assert "warning: mask_ratios[0]: 0.9 breaks Eq. 7" in result.output
    assert json.loads(result.output.splitlines()[-1])["speedup"] > 0


def test_show_plan_is_importable_for_the_experiment_form():
    from stitchkit.cost.latency import Costs, Plan

    prediction = plan_module.show_plan(Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.4, 0.2)),
                                       Costs(large_ms=10, small_ms=2.5))
    assert prediction.predicted_ms == pytest.approx(300.0)


def test_through_the_stitchkit_script_refusal_exits_2_with_one_line():
    out = subprocess.run(["stitchkit", "plan", *BASE, "--switch-steps", "10,30", "--mask-ratios", "0.8"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "stitchkit plan: error: mask_ratios[0]: 0.8 breaks Eq. 7; it must be below 1 − Ls/Ll = 0.75"]
    ok = subprocess.run(["stitchkit", "plan", *GOOD, "--json"], capture_output=True, text=True)
    assert ok.returncode == 0
    assert json.loads(ok.stdout.splitlines()[-1])["speedup"] == pytest.approx(500 / 300)
