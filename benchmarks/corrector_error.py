"""How well does the small model correct a skipped large step? The measurement behind ``small-corrector``.

On the large model's own trajectory (every step an anchor: both models on the same latents, the large
output used), for every step ``k`` after the first fifth and every distance ``d``, the large model's guided
output ``L_{k+d}`` is predicted three ways and the relative L1 error ``|L_{k+d} - prediction| / |L_{k+d}|``
averaged over prompts and ``k``:

* ``reuse``: ``L_k`` (a step cache's output reuse; MagCache reuses the blocks' residual instead, which is
  at least as good);
* ``corrected``: ``L_k + (S_{k+d} - S_k)`` (the whole small-model change since ``k``);
* ``gain 0.5``: ``L_k + 0.5 (S_{k+d} - S_k)`` (``policies/corrector.py``'s default);
* ``last gain``: ``L_k + a (S_{k+d} - S_k)`` with ``a`` the least-squares gain of the interval before,
  ``(L_k - L_{k-d}) ≈ a (S_k - S_{k-d})``: a gain the corrector could know at step ``k + d``;
* ``oracle gain``: the same with the least-squares ``a`` of that very pair (a bound on what any scalar
  gain could add).

Prints one table per pair and exits 1 when on some pair the correction at gain 0.5 does not reduce the
error of reuse at every distance up to 4 (the premise of the corrector would not hold there).

    OMP_NUM_THREADS=1 python benchmarks/corrector_error.py [--pairs shapes,shapes-1x160] [--prompts 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]


class EveryStepAnchors:
    """Both models every step, the large output used: the large model's trajectory with the small model's
    output on the very same latents beside it."""

    change_measure = "small-output"
    may_mask = False
    stages = ("small", "corrector")

    def reset(self, num_steps):
        pass

    def decide(self, state):
        from stitchkit.protocols import Decision

        return Decision(stage=1, large=True, small=True, reuse="corrected")


def outputs(pipe, prompt: str, steps: int):
    """Per step: the large and the small model's guided outputs on the same latents."""
    large, small = [], []

    def keep(info):
        large.append(info["prediction"].double())
        small.append(info["tensors"].small_output.double())

    pipe(prompt, num_inference_steps=steps, guidance_scale=3.0, output_type="latent",
         generator=torch.Generator().manual_seed(0), switch=EveryStepAnchors(), callback=keep)
    return large, small


def gain(small_change: torch.Tensor, large_change: torch.Tensor) -> float:
    """The least-squares ``a`` of ``large_change ≈ a · small_change``."""
    return float((small_change * large_change).sum() / (small_change * small_change).sum().clamp_min(1e-30))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="shapes,shapes-1x160")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-distance", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from stitchkit import StitchPipeline

    prompts = [p.strip() for p in (ROOT / "examples" / "shapes_prompts_200.txt").read_text().splitlines()
               if p.strip()][:args.prompts]
    holds = True
    for pair in args.pairs.split(","):
        pipe = StitchPipeline.from_pair(pair)
        sums = {d: [0.0] * 5 + [0] for d in range(1, args.max_distance + 1)}
        for prompt in prompts:
            large, small = outputs(pipe, prompt, args.steps)
            for k in range(args.steps // 5, args.steps):
                for d in sums:
                    t = k + d
                    if t >= args.steps or k - d < 0:
                        continue
                    delta_small = small[t] - small[k]
                    s = sums[d]
                    s[0] += rel(large[k], large[t])
                    s[1] += rel(large[k] + delta_small, large[t])
                    s[2] += rel(large[k] + gain(small[k] - small[k - d], large[k] - large[k - d]) * delta_small,
                                large[t])
                    s[3] += rel(large[k] + gain(delta_small, large[t] - large[k]) * delta_small, large[t])
                    s[4] += rel(large[k] + 0.5 * delta_small, large[t])
                    s[5] += 1
        print(f"\n{pair}: {len(prompts)} prompts, {args.steps} steps, guided outputs, anchors from step "
              f"{args.steps // 5} on; relative L1 error of the predicted large output")
        print("| distance d | reuse L_k | corrected L_k + (S_t - S_k) | gain 0.5 | last gain | oracle gain | "
              "gain 0.5 / reuse |")
        print("|---|---|---|---|---|---|---|")
        for d, (reuse, corrected, last, oracle, half, n) in sums.items():
            if n:
                print(f"| {d} | {reuse / n:.4f} | {corrected / n:.4f} | {half / n:.4f} | {last / n:.4f} | "
                      f"{oracle / n:.4f} | {half / reuse:.2f} |")
                holds = holds and (d > 4 or half < reuse)
    print("\nat gain 0.5 the correction reduces the error of reuse at every distance up to 4 on every pair" if holds
          else "\nFAIL: on some pair and distance <= 4 the correction at gain 0.5 is worse than reusing the last "
          "large output")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
