"""How many CPU threads should a pair run with? One generation per setting, each in a fresh process
(OpenMP reads its settings at start-up), optionally with a CPU-heavy process beside it.

    python benchmarks/threads.py [--pair shapes] [--steps 20] [--load]

Prints seconds per image for 1 thread and for every core, with OpenMP's default spin-waiting and with
``OMP_WAIT_POLICY=PASSIVE``; with ``--load`` one busy-looping process per core runs alongside (the
situation of a laptop doing other work). Exits non-zero when the thread count
:func:`stitchkit.cost.threads.default_threads` picks for the pair is more than 1.5x slower than the best
setting measured (with the ``OMP_WAIT_POLICY=PASSIVE`` the CLI sets), so the default stays a measured choice.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from stitchkit.pipeline.pairs import load_pair_pipeline
pipe = load_pair_pipeline(sys.argv[1])
steps = int(sys.argv[2])
kw = dict(num_inference_steps=steps, guidance_scale=3.0, output_type="latent", max_sequence_length=8)
pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw)  # warm-up
times = []
for seed in range(3):
    start = time.perf_counter()
    pipe("a small blue square at the top left", generator=torch.Generator().manual_seed(seed), **kw)
    times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "s": sorted(times)[1]}))
"""


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def _run(pair: str, steps: int, threads: int, passive: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, "-c", CHILD, pair, str(steps)], env=env, capture_output=True,
                         text=True, timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--load", action="store_true", help="one busy process per core beside each run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_busy, args=(stop,), daemon=True) for _ in range(cores if args.load else 0)]
    for hog in hogs:
        hog.start()
    try:
        settings = sorted({1, cores})
        results = {}
        print(f"pair {args.pair}, {args.steps} steps, guidance 3, {cores} cores, "
              f"{'with' if args.load else 'without'} a busy process per core; load {os.getloadavg()[0]:.2f}")
        print(f"{'threads':>8} {'OMP_WAIT_POLICY':>16} {'s / image':>10}")
        for threads in settings:
            for passive in (False, True):
                s = _run(args.pair, args.steps, threads, passive)
                results[(threads, passive)] = s
                print(f"{threads:>8} {'PASSIVE' if passive else 'default':>16} {s:>10.3f}", flush=True)
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    from stitchkit.pipeline.pairs import load_pair_pipeline
    from stitchkit.cost.threads import default_threads

    pipe = load_pair_pipeline(args.pair)
    chosen = default_threads(pipe.adapter.large_transformer, pipe.small)
    best = min(results.values())
    mine = results[(min(chosen, cores), True)]  # the CLI sets OMP_WAIT_POLICY=PASSIVE (stitchkit.cost.threads)
    print(f"default for {args.pair}: {chosen} thread(s): {mine:.3f} s against the best {best:.3f} s "
          f"({mine / best:.2f}x)")
    return 0 if mine <= 1.5 * best else 1


if __name__ == "__main__":
    sys.exit(main())
