"""Peak memory at the end of a long run against its peak during generation (issue 14): a 2,000-prompt
`stitchkit run` on the tiny random pair (64², one step, one method, one thread), in this process.

    OMP_NUM_THREADS=1 python benchmarks/long_run_memory.py [--prompts 2000] [--steps 1] [--max-ratio 1.10]

The run is `stitchkit run` itself (:func:`stitchkit.cli.main`); its report is wrapped so that the phases
split where the generation ends: *generation* is everything before the report (loading the pair, the
warm-up, profiling, every unit), *end* is everything after (results, trace.jsonl, grid, masks, plots, the
CLI's closing lines). Each phase's peak resident set size is the kernel's high-water mark (``VmHWM`` in
/proc/self/status, reset between the phases through /proc/self/clear_refs), checked against a sampler thread
reading ``VmRSS`` every 5 ms. Prints both peaks and their ratio; exits 1 when the end's peak is above
``--max-ratio`` times the generation's. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's VmHWM to the current RSS (``5`` to clear_refs); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """The largest VmRSS seen in each phase, read every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval, self.phase, self.peaks = interval, "generation", {"generation": 0, "end": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peaks[self.phase] = max(self.peaks[self.phase], _status("VmRSS"))
            time.sleep(self.interval)


def _experiment(folder: Path, prompts: int, steps: int) -> Path:
    import yaml

    texts = [f"a {COLOURS[i % 8]} {SHAPES[(i // 8) % 6]} number {i}" for i in range(prompts)]
    (folder / "prompts.txt").write_text("\n".join(texts) + "\n")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "long-run-memory", "pair": "tiny-random",
        "sampler": {"steps": steps, "guidance_scale": 3.0, "height": 64, "width": 64, "max_sequence_length": 8},
        "prompts": {"from": "prompts.txt"}, "seeds": [0], "methods": ["large"], "output": "out",
    }))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--max-ratio", type=float, default=1.10)
    parser.add_argument("--folder", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from stitchkit.cli import main as stitchkit
    from stitchkit.experiments import runner

    hwm: dict[str, int] = {}
    times: dict[str, float] = {}
    sampler = Sampler()
    reset = _reset_peak()
    report = runner.write_report

    def split_then_report(*a, **k):  # the generation ends where the report begins
        hwm["generation"] = _status("VmHWM")
        times["generation"] = time.perf_counter() - start
        sampler.phase = "end"
        if reset:
            _reset_peak()
        times["end_start"] = time.perf_counter()
        return report(*a, **k)

    runner.write_report = split_then_report
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        experiment = _experiment(folder, args.prompts, args.steps)
        sampler.start()
        start = time.perf_counter()
        code = stitchkit(["run", str(experiment), "-q", "--threads", "1"])
        hwm["end"] = _status("VmHWM")
        times["end"] = time.perf_counter() - times.get("end_start", start)
        sampler.done.set()
        sampler.join()
    runner.write_report = report
    if code != 0 or "generation" not in hwm:
        print(f"the run failed (exit {code})", file=sys.stderr)
        return 2
    peaks = {phase: max(hwm[phase] if reset else 0, sampler.peaks[phase]) for phase in ("generation", "end")}
    mib = 1024 * 1024
    print(f"\n{args.prompts} prompts x 1 seed x 1 method, tiny-random 64x64, {args.steps} step(s), 1 thread "
          f"(peak: {'VmHWM, reset between phases, and ' if reset else ''}VmRSS sampled every 5 ms)")
    print("| phase | wall (s) | peak RSS (MiB) | VmRSS sampled max (MiB) |\n|---|---|---|---|")
    for phase in ("generation", "end"):
        print(f"| {phase} | {times[phase]:.1f} | {peaks[phase] / mib:.1f} | {sampler.peaks[phase] / mib:.1f} |")
    ratio = peaks["end"] / peaks["generation"]
    verdict = "ok" if ratio <= args.max_ratio else "FAIL"
    print(f"end / generation peak: {ratio:.3f} (limit {args.max_ratio:.2f}): {verdict}")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
