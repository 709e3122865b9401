"""Batched generation with per-sample stages on the shapes pair: throughput, and what a mixed step costs.

Decisions are per sample (``stitchkit.loop.per_sample``), so in a batch the prompts leave the large stage at
different steps and a step can be *mixed*: some samples large, some hybrid, some small. The engine then runs
one batched call per group (large on the large-only samples, one masked forward per mask ratio, the small
model once on every sample that needs it). This script measures, on the shapes pair, one CPU thread,
20 steps, guidance 3, 8 prompts of ``examples/shapes_prompts_200.txt``:

1. images per second at batch 1 (8 generations of one prompt) and batch 8 (one generation of 8), for
   HybridStitch-30 with the pair's calibrated thresholds (0.15, 0.05) and SRDiffusion (its defaults:
   the `fastvideo` rule, threshold 0.01, min 5, max 30), and the share of the batch-8 steps that were mixed;
2. the cost of a mixed step against the sum of its groups: every distinct mix of decisions seen in the
   batch-8 runs is replayed as one step of 8 samples (after a large step that records the K/V cache) and,
   separately, as one step of each group alone (a batch of just its samples, the same decision for all);
   each is the time from the step's start to its end (the callback), median of ``--repeats``, taken
   round-robin so that a drifting load cancels. Exits 1 when mixed steps cost more than the sum of their
   groups plus 10 % (the total over the mixes seen, weighted by how often each occurred).

    OMP_NUM_THREADS=1 python benchmarks/batched.py [--prompts 8] [--steps 20] [--repeats 5]

The clock is the thread's CPU time (``time.thread_time``; one thread does all the work), as in
``benchmarks/masked_forward.py``: on a shared machine wall time measures the other processes as much as
this one. Figures taken under load still need a quiet re-run before they are quoted.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import attrs  # noqa: E402
import torch  # noqa: E402

from stitchkit.pipeline.pairs import load_pair_pipeline  # noqa: E402
from stitchkit.protocols import Decision  # noqa: E402

PROMPTS = Path(__file__).resolve().parent.parent / "examples" / "shapes_prompts_200.txt"
METHODS = {
    "hybridstitch-30": {"kind": "hybridstitch-30", "thresholds": [0.15, 0.05]},
    "srdiffusion": "srdiffusion",
}
LIMIT = 1.10


@attrs.define
class Scripted:
    """A batched switch policy replaying fixed per-sample decisions, step by step (for the replay)."""

    steps: list[tuple[Decision, ...]]
    batched = True
    change_measure = "x0"

    def reset(self, num_steps: int) -> None:
        pass

    def decide(self, state):
        return list(self.steps[state.step])


def generate(pipe, prompts, seeds, switch, steps, guidance):
    """CPU seconds for one batched generation of ``prompts`` (latents out: no VAE decode), and its output."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    start = time.thread_time()
    out = pipe(list(prompts), generator=gens, switch=switch, num_inference_steps=steps, guidance_scale=guidance,
               output_type="latent")
    return time.thread_time() - start, out


def step_seconds(pipe, prompts, decisions, guidance) -> float:
    """CPU time of step 1 of a two-step run: step 0 all large (records K/V), step 1 ``decisions``."""
    stamps: list[float] = []
    first = tuple(Decision(stage=0, large=True, small=False) for _ in prompts)
    pipe(list(prompts), generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
         switch=Scripted([first, tuple(decisions)]), num_inference_steps=2, guidance_scale=guidance,
         output_type="latent", callback=lambda step: stamps.append(time.thread_time()))
    return stamps[1] - stamps[0]


def mixes(out) -> collections.Counter:
    """The distinct mixed steps of a batch run: per sample (large, small, mask ratio), counted."""
    seen: collections.Counter = collections.Counter()
    for i, step in enumerate(out.steps):
        if step.mixed:
            seen[tuple((r.large_tokens > 0, r.small_tokens > 0, r.mask_ratio if 0 < r.mask_ratio < 1 else None)
                       for r in (t[i] for t in out.traces))] += 1
    return seen


def kind(key) -> str:
    """``large``, ``small`` or ``hybrid 30%``: what a mix's group ran."""
    large, small, ratio = key
    return f"hybrid {100 * ratio:.0f}%" if large and small else ("large" if large else "small")


def as_decision(key) -> Decision:
    large, small, ratio = key
    return Decision(stage=0, large=large, small=small, mask_ratio=ratio if (large and small) else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts, and the large batch size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the mixed-step replay (median)")
    parser.add_argument("--max-mixes", type=int, default=4, help="replay the most frequent mixes only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pair_pipeline("shapes")
    guidance = 3.0
    prompts = PROMPTS.read_text().splitlines()[: args.prompts]
    seeds = list(range(len(prompts)))
    k = len(prompts)
    generate(pipe, prompts[:2], seeds[:2], "large", 2, guidance)  # warm-up: allocations, lazy init

    print(f"shapes pair, {args.steps} steps, guidance {guidance}, {k} prompts, {torch.get_num_threads()} thread\n")
    print("| method | images/s batch 1 | images/s batch %d | ratio | mixed steps |" % k)
    print("|---|---|---|---|---|")
    all_mixes: collections.Counter = collections.Counter()
    throughput = {}
    for name, switch in METHODS.items():
        alone = sum(generate(pipe, [p], [s], switch, args.steps, guidance)[0] for p, s in zip(prompts, seeds))
        seconds, out = generate(pipe, prompts, seeds, switch, args.steps, guidance)
        mixed = sum(s.mixed for s in out.steps) / len(out.steps)
        all_mixes.update(mixes(out))
        throughput[name] = (k / alone, k / seconds)
        print(f"| {name} | {k / alone:.2f} | {k / seconds:.2f} | {alone / seconds:.2f}× | {mixed:.0%} |")

    print("\nmixed step vs the sum of its groups run alone (ms, median of %d rounds)\n" % args.repeats)
    print("| mix (samples per decision) | seen | mixed step | sum of groups | ratio |")
    print("|---|---|---|---|---|")
    total_mixed = total_groups = 0.0
    for mix, count in all_mixes.most_common(args.max_mixes):
        groups: dict = collections.defaultdict(list)
        for b, key in enumerate(mix):
            groups[key].append(b)
        rounds_mixed, rounds_groups = [], []
        for _ in range(args.repeats):
            rounds_mixed.append(step_seconds(pipe, prompts, [as_decision(key) for key in mix], guidance))
            rounds_groups.append(sum(step_seconds(pipe, [prompts[b] for b in members],
                                                  [as_decision(key)] * len(members), guidance)
                                     for key, members in groups.items()))
        mixed_ms, groups_ms = 1000 * statistics.median(rounds_mixed), 1000 * statistics.median(rounds_groups)
        label = ", ".join(f"{len(m)}×{kind(key)}" for key, m in groups.items())
        print(f"| {label} | {count} | {mixed_ms:.1f} | {groups_ms:.1f} | {mixed_ms / groups_ms:.3f} |")
        total_mixed += count * mixed_ms
        total_groups += count * groups_ms

    ratio = total_mixed / total_groups if total_groups else float("nan")
    steps_total = args.steps * len(METHODS)
    print(f"\nmixed steps cost {ratio:.3f}× the sum of their groups (limit {LIMIT:.2f}); "
          f"{sum(all_mixes.values())} of {steps_total} batch-{k} steps were mixed "
          f"({sum(all_mixes.values()) / steps_total:.0%}); throughput batch {k} / batch 1: "
          + ", ".join(f"{n} {b / a:.2f}×" for n, (a, b) in throughput.items())
          + ". CPU time of one thread on this machine as it was: re-run on a quiet one for figures to quote.")
    if not all_mixes:
        print("no mixed step occurred: nothing to compare")
        return 1
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
