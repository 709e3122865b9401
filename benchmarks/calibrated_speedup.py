"""Does a calibrated method run at the speedup it was calibrated for? (issue 9's check)

Calibrates ``--method`` to ``--target-speedup`` exactly as ``stitchkit calibrate`` does (the first
``--units`` prompts of the experiment, the latency model over the loop's replayed traces), then generates the
next ``--prompts`` prompts -- held out from calibration -- with the large model and with the calibrated
method, alternating per prompt (a drifting load hits both alike), one thread, batch 1, and prints:

- predicted speedup: the latency model (Eq. 3-6) over the check runs' own traces, priced with the pair's
  profile or, with ``--costs loop``, the loop's own step timings (:mod:`stitchkit.cost.loop_costs`);
- measured speedup (wall): the denoising steps' wall-clock times recorded in the traces;
- measured speedup (thread CPU): ``time.thread_time`` of each whole latent-output call (text encoding
  included, decoding not), which a busy second core does not inflate;
- calibration time against the time one full run of the experiment's units would take.

Exits 1 when the predicted speedup is more than ``--predicted-tolerance`` (5 %) from the target, or the
wall-clock one more than ``--measured-tolerance`` (10 %). Quote wall figures from a quiet machine only.

    OMP_NUM_THREADS=1 python benchmarks/calibrated_speedup.py [examples/paper_tables.yaml] \
        [--method hybridstitch-30] [--target-speedup 1.8] [--units 8] [--prompts 32] [--costs loop]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", default=str(ROOT / "examples" / "paper_tables.yaml"))
    parser.add_argument("--method", default="hybridstitch-30")
    parser.add_argument("--target-speedup", type=float, default=1.8)
    parser.add_argument("--units", type=int, default=8, help="calibration units (the experiment's first)")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts of the check run")
    parser.add_argument("--costs", choices=("profile", "loop"), default="profile",
                        help="price steps with the pair's profile or the loop's own step timings (calibrate --costs)")
    parser.add_argument("--predicted-tolerance", type=float, default=0.05)
    parser.add_argument("--measured-tolerance", type=float, default=0.10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from stitchkit.calibration.setup import prepare
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.cost.latency import predict_from_steps
    from stitchkit.calibration.target import Target, search, shortest, with_values
    from stitchkit.loop.trace import latency_steps

    config = ExperimentConfig.from_yaml(args.experiment)
    start = time.perf_counter()
    problem, setup = prepare(config, args.method, units=args.units, costs_from=args.costs)
    found = search(problem, Target(kind="speedup", value=args.target_speedup))
    values = shortest(problem, found.values)
    calibration_s = time.perf_counter() - start
    calibrated = problem.summary(values)
    per_generation_s = setup.generation_s / max(1, setup.generations)
    full_units = len(config.prompts) * len(config.seeds)
    switch = {**setup.base, **with_values(problem.knobs, values)}

    held_out = [(p, s) for p in config.prompts for s in config.seeds][args.units:args.units + args.prompts]
    if len(held_out) < args.prompts:
        print(f"only {len(held_out)} held-out units in {args.experiment}", file=sys.stderr)
        return 2
    totals = {name: {"wall_ms": 0.0, "cpu_s": 0.0, "predicted_ms": 0.0} for name in ("large", "method")}
    for unit in held_out:
        for name, spec in (("large", "large"), ("method", switch)):
            cpu = time.thread_time()
            out = setup.generate(unit, spec)
            totals[name]["cpu_s"] += time.thread_time() - cpu
            totals[name]["wall_ms"] += sum(r.large_ms + r.small_ms for r in out.trace)
            prediction = predict_from_steps(latency_steps(out.trace), problem.costs)
            totals[name]["predicted_ms"] += prediction.best_predicted_ms

    large, method = totals["large"], totals["method"]
    rows = [
        ("predicted on calibration units", calibrated.speedup, args.predicted_tolerance),
        ("predicted on held-out units", large["predicted_ms"] / method["predicted_ms"], args.predicted_tolerance),
        ("measured, wall (denoising)", large["wall_ms"] / method["wall_ms"], args.measured_tolerance),
        ("measured, thread CPU (call)", large["cpu_s"] / method["cpu_s"], None),
    ]
    print(f"{args.method} calibrated to {args.target_speedup:g}x on {len(setup.units)} units: "
          f"{', '.join(f'{k.label}={v:g}' for k, v in zip(problem.knobs, values))}")
    c = problem.costs
    masked = ", ".join(f"L_l({r:.2f}) {ms / c.large_ms:.2f} L_l" for r, ms in c.masked_ms)
    print(f"costs ({c.source}): L_l {c.large_ms:.1f} ms, L_s {c.small_ms:.1f} ms" + (f", {masked}" if masked else ""))
    print(f"calibration took {calibration_s:.1f} s; one full run of the experiment's {full_units} units of this "
          f"method is about {full_units * per_generation_s:.1f} s ({per_generation_s:.2f} s per generation)")
    print(f"check: {len(held_out)} held-out units, large and {args.method} alternating, one thread, batch 1\n")
    print(f"| {'speedup':<32} | {'value':>6} | {'off target':>10} | {'limit':>6} |")
    print(f"|{'-' * 34}|{'-' * 8}|{'-' * 12}|{'-' * 8}|")
    failed = False
    for label, value, tolerance in rows:
        off = value / args.target_speedup - 1
        missed = tolerance is not None and abs(off) > tolerance
        failed |= missed
        limit = "–" if tolerance is None else f"{tolerance:.0%}"
        print(f"| {label:<32} | {value:>5.3f}x | {off:>+9.1%}{'!' if missed else ' '} | {limit:>6} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
