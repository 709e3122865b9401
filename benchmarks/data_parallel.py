"""Images per second of `stitchkit run` with 1 and with 2 data-parallel processes (torchrun, gloo, one thread
each) on the shapes pair; exits non-zero when 2 processes are less than 1.7x as fast as one (issue 12).

    python benchmarks/data_parallel.py [--prompts 24] [--min-ratio 1.7]

Throughput is counted over the generation window only: from the first to the last record written, plus one
unit's mean latency, so that the start-up both runs pay (imports, loading the pair, the warm-up generation)
does not blur the comparison. The whole command's wall time is printed beside it. Run it on a quiet
machine: another busy process on one of two cores halves the 2-process figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROMPTS = Path(__file__).resolve().parents[1] / "examples" / "shapes_prompts_200.txt"


def _experiment(folder: Path, prompts: int) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "data-parallel", "pair": "shapes", "sampler": {"steps": 20, "guidance_scale": 3.0},
        "prompts": {"from": str(PROMPTS), "sample": prompts, "seed": 0}, "seeds": [0],
        "methods": ["large", "small", {"name": "hybridstitch-30",
                                       "switch": {"kind": "hybridstitch-30", "thresholds": [0.15, 0.05]}}],
        "allow_unprofitable": True, "output": "out",
    }))
    return path


def _run(folder: Path, processes: int) -> tuple[float, float, int]:
    """(images per second over the generation window, whole wall seconds, images) of one run."""
    exp = _experiment(folder, ARGS.prompts)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stitchkit", "run", "-q", str(exp)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "stitchkit", "run", "-q", str(exp)]
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    records = list((folder / "out" / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime for p in records]
    unit_s = statistics.fmean(json.loads(p.read_text())["latency_ms"] for p in records) / 1000.0
    window = max(stamps) - min(stamps) + unit_s * processes  # the first record of each rank took a unit too
    return len(records) / window, wall, len(records)


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        os.environ["STITCHKIT_CACHE"] = str(cache)  # one profile, measured by the first run, read by the second
        for processes in (1, 2):
            folder = Path(tmp) / f"p{processes}"
            folder.mkdir()
            rows.append((processes, *_run(folder, processes)))
    print("| processes | images | images/s (generation) | whole run (s) |")
    print("|---|---|---|---|")
    for processes, rate, wall, n in rows:
        print(f"| {processes} | {n} | {rate:.3f} | {wall:.1f} |")
    ratio = rows[1][1] / rows[0][1]
    print(f"scaling 2 / 1 processes: {ratio:.2f}x (target >= {ARGS.min_ratio:.2f}x); "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0 if ratio >= ARGS.min_ratio else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--min-ratio", type=float, default=1.7)
    ARGS = parser.parse_args()
    sys.exit(main())
