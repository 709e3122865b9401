"""benchmarks/crossover.py and benchmarks/corrector_error.py (issue 21) run end to end on a tiny setting, and
the crossover's SD3.5 projection is the latency model priced by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import crossover


def test_sd35_costs_are_the_measured_768_block():
    costs = crossover.sd35_costs()
    assert (costs.large_ms, costs.small_ms) == (112.3, 39.6)
    assert dict(costs.masked_ms) == {0.1: 30.1, 0.2: 37.6, 0.3: 43.2, 0.4: 50.4}


def test_projection_prices_each_step_by_hand():
    costs = crossover.sd35_costs()
    # 4 full large steps, 10 corrected (small alone), 6 small-head steps, 2 anchors (both), 3 hybrid at 30 %.
    steps = {"1|0": 4, "0|1": 16, "1|1": 2, "0.3|1": 3}
    total = 4 * 112.3 + 16 * 39.6 + 2 * (112.3 + 39.6) + 3 * (43.2 + 39.6)
    assert crossover.projected(steps, costs) == pytest.approx(25 * 112.3 / total)


@pytest.mark.slow
def test_crossover_runs_end_to_end(tmp_path):
    results, plot = tmp_path / "results.json", tmp_path / "crossover.png"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crossover.py"), "--pairs", "shapes",
                          "--steps", "8", "--prompts", "1", "--units", "1", "--candidates", "1",
                          "--results", str(results), "--plot", str(plot)],
                         capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                           "PATH": "/usr/bin:/bin",
                                                                           "HOME": str(tmp_path)})
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr[-2000:]
    cell = json.loads(results.read_text())["cells"]["shapes/8"]
    names = {r["name"] for r in cell["rows"]}
    expected = {m["name"] for m in crossover.caches(8) + crossover.compositions(8)} | {"large"}
    assert expected <= names
    assert {r["group"] for r in cell["rows"]} >= {"cache", "composition", "reference"}
    large = next(r for r in cell["rows"] if r["name"] == "large")
    assert large["speedup"] == 1.0 and large["feature"] == 0.0 and large["large_eq"] == 8.0
    for r in cell["rows"]:
        assert sum(r["steps"].values()) == 8, r["name"]  # one prompt, 8 steps, each priced once
    assert plot.stat().st_size > 10_000
    verdict = "beats the fastest cache" in run.stdout.splitlines()[-1]
    assert (run.returncode == 0) == verdict


@pytest.mark.slow
def test_corrector_error_prints_its_table():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "corrector_error.py"), "--pairs", "shapes",
                          "--prompts", "1", "--steps", "10", "--max-distance", "2"],
                         capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                           "PATH": "/usr/bin:/bin"})
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2
    for line in rows:
        reuse, corrected, half, last, oracle, ratio = (float(x) for x in line.strip("|").split("|")[1:])
        assert min(reuse, corrected, half, last, oracle) > 0
        assert ratio == pytest.approx(half / reuse, abs=0.006)
