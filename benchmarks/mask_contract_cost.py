"""What the run-time mask contract check costs (issue 25): the engine checks every mask policy answer (shape,
count, range, order, uniqueness: :mod:`stitchkit.loop.protocol_checks`), every hybrid step.

On the shapes pair (256 tokens, 20 steps, guidance 3, one CPU thread), for HybridStitch-30 at the pair's
calibrated thresholds (0.15, 0.05) with ``--prompts`` prompts at batch 1 and then as one batch:

1. the check alone: microseconds per call of ``check_indices`` + ``check_index_values`` on a mask of the
   run's shape (median of 2,000 calls);
2. whole generations with the check and with it replaced by a no-op, alternated ``--repeats`` times so that
   a drifting load cancels; the clock is the thread's CPU time (``time.thread_time``), as in
   ``benchmarks/batched.py``.

Exits 1 when the check adds more than ``--max-overhead`` (default 3 %: the A/B of whole generations on a shared
2-core machine is noisy to about ±1.5 %, far above the check's own share) to a generation's median.

    OMP_NUM_THREADS=1 python benchmarks/mask_contract_cost.py [--prompts 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from stitchkit.loop import per_sample  # noqa: E402
from stitchkit.loop.protocol_checks import check_index_values, check_indices  # noqa: E402
from stitchkit.masks import mask_size, top_k_indices  # noqa: E402
from stitchkit.pipeline import StitchPipeline  # noqa: E402
from stitchkit.sampler import PresetSamplerWarning  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[1] / "examples" / "shapes_prompts_200.txt"
METHOD = {"kind": "hybridstitch-30", "thresholds": [0.15, 0.05]}


def _check_alone(batch: int, n: int, ratio: float, calls: int = 2000) -> float:
    """Microseconds per check of one ``(batch, k)`` mask, median over ``calls``."""
    indices = top_k_indices(torch.rand(batch, n), mask_size(ratio, n))
    policy = object()
    times = []
    for _ in range(calls):
        start = time.thread_time_ns()
        check_indices(indices, policy, batch, n, ratio)
        check_index_values(indices, policy, n)
        times.append(time.thread_time_ns() - start)
    return statistics.median(times) / 1000.0


def _generation_ms(pipe, prompts: list[str], batch: bool) -> float:
    kwargs = dict(height=32, width=32, num_inference_steps=20, guidance_scale=3.0, max_sequence_length=77,
                  output_type="latent", switch=METHOD)
    start = time.thread_time()
    if batch:
        pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kwargs)
    else:
        for i, prompt in enumerate(prompts):
            pipe(prompt, generator=torch.Generator().manual_seed(i), **kwargs)
    return (time.thread_time() - start) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-overhead", type=float, default=0.03)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", PresetSamplerWarning)  # the calibrated thresholds are for this size
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()][:args.prompts]
    pipe = StitchPipeline.from_pair("shapes")
    n = 256
    print(f"mask contract check, shapes pair ({n} tokens), HybridStitch-30 (0.15, 0.05), 20 steps, one thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: CPU time, not wall)")
    print(f"the check alone: {_check_alone(1, n, 0.3):.1f} µs per mask (1 × {mask_size(0.3, n)}), "
          f"{_check_alone(args.prompts, n, 0.3):.1f} µs per group ({args.prompts} × {mask_size(0.3, n)})")
    checked = (per_sample.check_indices, per_sample.check_index_values)
    unchecked = (lambda *a, **k: None, lambda *a, **k: None)
    failed = False
    print(f"{'generation':<28} {'checked ms':>11} {'unchecked ms':>13} {'overhead':>9}")
    for batch in (False, True):
        times: dict[bool, list[float]] = {True: [], False: []}
        _generation_ms(pipe, prompts, batch)  # warm-up
        for _ in range(args.repeats):
            for check in (True, False):
                per_sample.check_indices, per_sample.check_index_values = checked if check else unchecked
                times[check].append(_generation_ms(pipe, prompts, batch))
        per_sample.check_indices, per_sample.check_index_values = checked
        on, off = statistics.median(times[True]), statistics.median(times[False])
        overhead = on / off - 1.0
        failed |= overhead > args.max_overhead
        label = f"{args.prompts} prompts, " + ("one batch" if batch else "batch 1")
        print(f"{label:<28} {on:>11.1f} {off:>13.1f} {overhead:>+8.2%}")
    print("FAIL: the check costs more than" if failed else "ok: within", f"{args.max_overhead:.0%} of a generation")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
