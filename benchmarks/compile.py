"""Compiled against eager: a large step, a 30 % masked step and a small step of a pair, on the CPU.

Both transformers are compiled as ``StitchPipeline.compile_repeated_blocks`` compiles them (regional
compilation, inductor, ``fullgraph``, dynamic token counts; :mod:`stitchkit.pipeline.compile`), and each row
is timed compiled and eager on the same model (``torch.compiler.set_stance("force_eager")`` for the eager
runs), as the loop calls it: the large model's recording full forward (a HybridStitch full step), its masked
forward on a random 30 % of the tokens per sample against the recorded K/V, and the small model's stock
forward. Batch 2 (the CFG pair). Runs go round-robin over the rows, so a shared machine's drifting load hits
them alike; the clock is the thread's CPU time (one thread).

Prints, per row, eager and compiled ms (medians) and compiled / eager (the median over runs of the ratio
within a run), the largest difference of the compiled outputs from eager, the seconds the first (compiling)
calls took and the graphs compiled after them. Exits 1 where compiled is slower than eager, an output
differs from eager by more than ``--tolerance`` (relative to the output's largest value), or a timed call
compiled anything.

    OMP_NUM_THREADS=1 python benchmarks/compile.py                  # the shipped shapes pair, 256 tokens
    OMP_NUM_THREADS=1 python benchmarks/compile.py --pair flux-tiny-random
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch._dynamo.utils import counters

from stitchkit import StitchPipeline
from stitchkit.cost.profile import random_inputs
from stitchkit.pipeline.video import latent_shape

RATIO = 0.3


def inputs_for(pipe, model, *, text: int, batch: int):
    """Random inputs of the shapes the pipeline hands ``model`` at the pair's default size."""
    size = pipe.adapter.default_size()
    height, width = (size, size) if isinstance(size, int) else size
    latent = latent_shape(pipe.adapter, height=height, width=width)
    shapes = dict(text_tokens=text, batch=batch, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    if pipe.family.random_inputs is not None:
        return pipe.family.random_inputs(model, latent_shape=latent, **shapes)
    return random_inputs(model, latent_height=latent[-2], latent_width=latent[-1], **shapes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="shapes")
    parser.add_argument("--text", type=int, default=16, help="text tokens")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = StitchPipeline.from_pair(args.pair)
    large, small, masked, forward = pipe.transformer, pipe.small_transformer, pipe.masked_large, pipe.family.forward
    inputs_large = inputs_for(pipe, large, text=args.text, batch=2)
    inputs_small = inputs_for(pipe, small, text=args.text, batch=2)
    x = inputs_large.hidden_states
    n = masked.num_tokens(*x.shape[2:])
    g = torch.Generator().manual_seed(1)
    indices = torch.stack([torch.randperm(n, generator=g)[:round(RATIO * n)].sort().values for _ in range(2)])
    rows = {
        "large step (record K/V)": lambda: masked.forward(inputs_large, record=True),
        f"masked large step ({RATIO:.0%} of {n} tokens)": lambda: masked.forward_masked(inputs_large, indices),
        "small step": lambda: forward(small, inputs_small),
    }

    with torch.no_grad(), masked:
        eager_out = {}
        with torch.compiler.set_stance("force_eager"):
            for name, fn in rows.items():
                eager_out[name] = fn()
        pipe.compile_repeated_blocks()
        counters.clear()
        start = time.perf_counter()
        compiled_out = {name: fn() for name, fn in rows.items()}  # the first calls compile
        compile_s = time.perf_counter() - start
        warm_graphs = counters["stats"]["unique_graphs"]
        counters.clear()

        times: dict[tuple[str, str], list[float]] = {(name, how): [] for name in rows for how in ("eager", "compiled")}
        for i in range(args.warmup + args.runs):
            for name, fn in rows.items():
                for how in ("eager", "compiled"):
                    stance = "force_eager" if how == "eager" else "default"
                    with torch.compiler.set_stance(stance):
                        start = time.thread_time()
                        fn()
                        elapsed = (time.thread_time() - start) * 1e3
                    if i >= args.warmup:
                        times[name, how].append(elapsed)
        timed_graphs = counters["stats"]["unique_graphs"]

    print(f"pair {args.pair}: {n} tokens, {args.text} text tokens, batch 2, float32, CPU, 1 thread "
          f"(the machine was shared: times are CPU time of this thread, medians over {args.runs} round-robin runs)")
    print(f"first calls (compiling): {compile_s:.1f} s, {warm_graphs} graphs; graphs compiled in the timed runs: "
          f"{timed_graphs}")
    print(f"{'step':<40} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15} {'max |diff|':>11}")
    failed = timed_graphs > 0
    for name in rows:
        eager_ms = statistics.median(times[name, "eager"])
        compiled_ms = statistics.median(times[name, "compiled"])
        ratio = statistics.median(c / e for c, e in zip(times[name, "compiled"], times[name, "eager"]))
        diff = (compiled_out[name] - eager_out[name]).abs().max().item()
        scale = eager_out[name].abs().max().item()
        ok = ratio <= 1.0 and diff <= args.tolerance * scale
        failed |= not ok
        print(f"{name:<40} {eager_ms:>9.2f} {compiled_ms:>12.2f} {ratio:>15.3f} {diff:>11.2e}"
              f"{'' if ok else '  <- FAIL'}")
    if failed:
        print("FAIL: compiled is slower than eager, differs from it, or recompiled in a timed run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
