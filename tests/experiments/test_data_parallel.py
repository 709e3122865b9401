"""Data-parallel runs under torchrun (issue 12): K processes on the CPU with gloo write one run folder that
is the single-process folder, pixel for pixel; a killed rank fails the job fast and a rerun with any world
size finishes only the missing units."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.runner import run_experiment

EXPERIMENT = {
    "name": "dp",
    "pair": "tiny-random",
    "sampler": {"steps": 6, "guidance_scale": 3.0, "height": 64, "width": 64, "max_sequence_length": 8},
    "prompts": ["a red circle", "a blue square", "a green star", "a cat", "a dog", "a tree", "a car", "a boat"],
    "seeds": [0, 1],
    "methods": ["large", "small", {"name": "hybridstitch-30", "switch": {"kind": "hybridstitch-30",
                                                                       "thresholds": [0.5, 0.3]}}],
    "allow_unprofitable": True,
}
TIMING_KEYS = {"latency_ms", "denoise_ms", "predicted_denoise_ms", "paper_predicted_denoise_ms", "large_ms",
               "small_ms", "load", "ms"}


def _write(folder: Path, output: str) -> Path:
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump({**EXPERIMENT, "output": output}))
    return path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "stitchkit", "run", "-q"]


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _folder(out: Path) -> dict[str, object]:
    """What a run folder holds, timings aside: image bytes and records."""
    files = {}
    for path in sorted((out / "images").rglob("*.png")):
        files[str(path.relative_to(out))] = path.read_bytes()
    for path in sorted((out / "records").rglob("*.json")):
        files[str(path.relative_to(out))] = _without_timings(json.loads(path.read_text()))
    return files


def _units_in_trace(out: Path) -> list[tuple]:
    steps = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    return [(s["method"], s["prompt_index"], s["seed"], s["step"]) for s in steps]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same experiment run by one plain process (no torch.distributed)."""
    import torch.distributed as dist

    folder = tmp_path_factory.mktemp("single")
    out = run_experiment(ExperimentConfig.from_yaml(_write(folder, "out")), progress=False)
    assert not dist.is_initialized()
    return _folder(out)


def test_two_processes_write_the_single_process_folder(tmp_path, reference):
    exp = _write(tmp_path, "out")
    done = subprocess.run(_torchrun("--standalone", "--nproc_per_node=2") + [str(exp)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert _folder(out) == reference  # the same image bytes and records, whichever rank made them
    units = _units_in_trace(out)
    assert len(units) == len(set(units)) == len(reference) // 2 * 6  # every unit once, 6 steps each
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["large", "small", "hybridstitch-30"]
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
    # only rank 0 reported: one table and one closing line
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("| method") == 1


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the worker with ``RANK=rank`` among the processes started with ``marker`` in their env."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"STITCHKIT_TEST_MARK={marker}".encode() in env and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_a_killed_rank_fails_the_job_and_one_process_resumes_it(tmp_path, reference):
    exp = _write(tmp_path, "out")
    marker = uuid.uuid4().hex
    job = subprocess.Popen(_torchrun("--standalone", "--nproc_per_node=2") + [str(exp)], cwd=tmp_path,
                           env=_env(STITCHKIT_TEST_MARK=marker), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    records = tmp_path / "out" / "records"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(records.rglob("*.json"))) < 2:
        time.sleep(0.02)
    pid = _rank_pid(marker, 1)
    assert pid is not None, "rank 1 was not found"
    os.kill(pid, signal.SIGKILL)  # mid-run: units are still missing
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "rank      : 1" in output and "SIGKILL" in output  # the launcher names the dead rank
    finished = len(list(records.rglob("*.json")))
    assert 2 <= finished < len(reference) // 2, finished

    resumed = run_experiment(ExperimentConfig.from_yaml(exp), progress=False)  # one plain process
    assert _folder(resumed) == reference
    units = _units_in_trace(resumed)
    assert len(units) == len(set(units))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_meet_through_c10d(tmp_path, reference):
    exp = _write(tmp_path, "out")
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(_torchrun("--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                                        "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=dp-test")
                              + [str(exp)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    out = tmp_path / "out"
    assert _folder(out) == reference
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
