"""Calibration on the shipped shapes pair: the replayed switches are the ones a real run makes."""

import textwrap

import pytest
import torch

from stitchkit.calibration.setup import prepare
from stitchkit.calibration.target import Target, search, shortest
from stitchkit.cost.latency import Costs
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig

EXPERIMENT = """
    pair: shapes
    sampler: {steps: 8, guidance_scale: 3.0}
    prompts: [a small red circle at the top left on a white background, a large blue square in the center on a black background]
    seeds: [0]
    methods:
      - large
      - {name: hs, switch: {kind: hybridstitch, thresholds: [0.15, 0.05], mask_ratios: [0.3]}}
      - {name: sr, switch: {kind: srdiffusion, min_switch_step: 1, max_switch_step: 6}}
    output: out
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "e.yaml"
    path.write_text(textwrap.dedent(EXPERIMENT))
    return ExperimentConfig.from_yaml(path)


@pytest.fixture(scope="module")
def shapes_pipe():
    from stitchkit.pipeline import StitchPipeline

    return StitchPipeline.from_shapes()


@pytest.mark.parametrize(("method", "target"), [("hs", 1.4), ("sr", 1.5)])
def test_replayed_switches_are_what_a_real_run_does(config, shapes_pipe, method, target):
    costs = Costs(large_ms=10.0, small_ms=3.0)
    problem, setup = prepare(config, method, units=2, pipe=shapes_pipe, costs=costs)
    found = search(problem, Target(kind="speedup", value=target))
    values = shortest(problem, found.values)
    predicted = problem.replays(values)
    policy = problem.build(values)
    for unit, replayed in zip(setup.units, predicted):
        out = setup.generate(unit, policy)
        stages = [r.stage for r in out.trace]
        real = tuple(i for i in range(1, len(stages)) if stages[i] != stages[i - 1])
        assert real == replayed.transitions
        assert [(r.mask_ratio, r.small_tokens > 0) for r in out.trace] == list(replayed.steps)
    assert problem.summary(values).speedup >= target
    # a few recorded runs per unit, not one per candidate
    assert problem.store.runs <= 2 * (1 + 8)


def test_cli_prints_thresholds_and_the_yaml(tmp_path, capsys):
    from stitchkit.cli import main

    exp = tmp_path / "e.yaml"
    exp.write_text(textwrap.dedent(EXPERIMENT))
    assert main(["calibrate", str(exp), "--method", "hs", "--target-speedup", "1.3", "--units", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("hs on shapes: 2 calibration units, 8 steps, costs from a profile")
    assert out[1] == "goal: predicted speedup >= 1.3x"
    assert out[2].startswith("found: thresholds[0]=") and "predicted speedup 1." in out[2]
    assert out[3].startswith("calibration: ") and "one full run of the experiment's 2 units is about" in out[3]
    assert out[-2].startswith("# paste into methods")
    import yaml

    (item,) = yaml.safe_load(out[-1])
    # issue 24: a new name carrying the target, so the line can be pasted into the same run (it grows)
    assert item["name"] == "hs@1.3x" and item["switch"]["kind"] == "hybridstitch"
    assert item["switch"]["thresholds"][0] > item["switch"]["thresholds"][1] > 0
    grown = tmp_path / "grown.yaml"
    grown.write_text(exp.read_text().replace("methods:", "methods:\n  " + out[-1], 1))
    assert "hs@1.3x" in [m.name for m in ExperimentConfig.from_yaml(grown).methods]  # a valid method line
    assert main(["calibrate", str(exp), "--method", "large", "--target-speedup", "1.3"]) == 2
    assert main(["calibrate", str(exp), "--method", "hs"]) == 2


def test_match_tunes_a_baseline_to_another_methods_quality(config, shapes_pipe):
    from stitchkit.calibration.match import match_quality, metric_score
    from stitchkit.calibration.target import candidates

    problem, setup = prepare(config, "sr", units=2, pipe=shapes_pipe, costs=Costs(large_ms=10.0, small_ms=3.0))
    found, mine, theirs = match_quality(problem, setup, "hs", "psnr")
    assert mine >= theirs
    assert found.values[0] in candidates(problem, [])
    # the score is the experiment's metric on the images a real run with that threshold makes
    policy = problem.build(found.values)
    large = [setup.generate(u, "large", output_type="pil").images[0] for u in setup.units]
    images = [(u[0], setup.generate(u, policy, output_type="pil").images[0]) for u in setup.units]
    assert metric_score(config, "psnr", images, large) == pytest.approx(mine)


def test_loop_costs_are_the_medians_of_the_traces_own_timings():
    from stitchkit.cost.loop_costs import costs_from_traces, spread_transitions

    def step(ratio, large_ms, small_ms):
        return {"mask_ratio": ratio, "large_ms": large_ms, "small_ms": small_ms, "small_tokens": 4 if small_ms else 0}

    large_only = [step(1.0, ms, 0.0) for ms in (50.0, 40.0, 41.0, 44.0)]
    hybrid = [step(1.0, 42.0, 0.0), step(0.25, 30.0, 7.0), step(0.25, 20.0, 6.0), step(0.25, 22.0, 9.0),
              step(0.5, 31.0, 8.0), step(0.0, 0.0, 5.0), step(1.0, 90.0, 6.0)]  # last: FullLarge, large + small
    costs = costs_from_traces([large_only, hybrid])
    assert costs.source == "loop"
    assert costs.large_ms == 42.0  # median of 50, 40, 41, 44, 42 (the FullLarge step ran the small model too)
    assert costs.small_ms == 6.5  # median of 7, 6, 9, 8, 5, 6
    assert costs.masked_ms == ((0.25, 22.0), (0.5, 31.0))
    assert spread_transitions(20, 2) == (7, 13) and spread_transitions(8, 1) == (4,)
    with pytest.raises(ConfigError, match=r"^--costs: loop: no step of the small model was timed"):
        costs_from_traces([large_only])
    with pytest.raises(ConfigError, match=r"^sampler.steps: 2 steps cannot hold 3 stages"):
        spread_transitions(2, 2)


def test_calibration_priced_by_the_loop_times_every_stage_of_the_method(config, shapes_pipe, monkeypatch):
    """--costs loop: per calibration unit a large-only run and one run of the method's stages (transitions
    spread evenly over the 8 steps); the search is priced with exactly the medians of those runs' timings."""
    import stitchkit.calibration.setup as calibration_setup
    from stitchkit.cost.loop_costs import costs_from_traces as real

    seen = []
    # where prepare looks it up
    monkeypatch.setattr(calibration_setup, "costs_from_traces", lambda traces: seen.extend(traces) or real(seen))
    problem, setup = prepare(config, "hs", units=2, pipe=shapes_pipe, costs_from="loop")
    assert setup.generations == 5  # warm-up, then per unit (2) a large-only run and the method's stages
    assert len(seen) == 4
    for large_only, stages in (seen[0:2], seen[2:4]):
        assert [(r.stage, r.mask_ratio, r.small_tokens) for r in large_only] == [(0, 1.0, 0)] * 8
        assert [r.stage for r in stages] == [0, 0, 0, 1, 1, 2, 2, 2]  # spread_transitions(8, 2) == (3, 5)
    assert problem.costs == real(seen) and problem.costs.source == "loop"
    assert [r for r, _ in problem.costs.masked_ms] == [pytest.approx(0.3, abs=0.01)]
    found = search(problem, Target(kind="speedup", value=1.3))
    assert problem.summary(shortest(problem, found.values)).speedup >= 1.3


def test_unknown_cost_source_is_refused_with_its_flag(config, shapes_pipe):
    with pytest.raises(ConfigError, match=r"^--costs: unknown source 'guess'"):
        prepare(config, "hs", units=1, pipe=shapes_pipe, costs_from="guess")


def test_best_generates_the_candidates_near_the_target_and_keeps_the_best_by_the_metric(tmp_path, capsys):
    """``--target-speedup X --best METRIC --json``: at least three candidates, each within the tolerance of
    X, each scored by the metric on the images a real (adaptive, not forced) run with its thresholds makes,
    and ``chosen`` the best of them."""
    import json

    import yaml

    from stitchkit.calibration.match import metric_score
    from stitchkit.cli import main
    from stitchkit.pipeline import StitchPipeline

    exp = tmp_path / "e.yaml"
    data = yaml.safe_load(textwrap.dedent(EXPERIMENT))
    data["prompts"] = data["prompts"] + ["a small green triangle at the bottom right on a red background"]
    data["sampler"]["steps"] = 10
    exp.write_text(yaml.safe_dump(data))
    assert main(["calibrate", str(exp), "--method", "hs", "--target-speedup", "1.3", "--units", "3",
                 "--best", "feature_distance", "--candidates", "3", "--tolerance", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) >= 3 and out["listed"] >= len(out["candidates"])
    for c in out["candidates"]:
        assert 1.3 <= c["predicted_speedup"] <= 1.3 * 1.3 + 1e-9
        assert set(c) >= {"params", "predicted_speedup", "feature_distance"}
    assert out["chosen"] == min(out["candidates"], key=lambda c: c["feature_distance"])
    assert len({c["feature_distance"] for c in out["candidates"]}) > 1  # the choice is a real one
    # Each score is the metric of the run the thresholds make, generated here independently.
    config = ExperimentConfig.from_yaml(exp)
    pipe = StitchPipeline.from_shapes()
    units = [(p, 0) for p in config.prompts]
    call = dict(num_inference_steps=10, guidance_scale=3.0, output_type="pil", allow_unprofitable=True)

    def images(switch):
        return [pipe(p, generator=torch.Generator().manual_seed(s), switch=switch, **call).images[0] for p, s in units]

    large = images("large")
    for c in out["candidates"][:2]:
        switch = {"kind": "hybridstitch", "mask_ratios": [0.3], **c["params"]}
        got = metric_score(config, "feature_distance", list(zip(config.prompts, images(switch))), large)
        assert got == pytest.approx(c["feature_distance"], rel=1e-6, abs=1e-9)
    assert main(["calibrate", str(exp), "--method", "hs", "--target-speedup", "1.3", "--json"]) == 2  # needs --best
