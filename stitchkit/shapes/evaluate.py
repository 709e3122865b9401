"""Measure the shapes pair with the offline metrics: each model alone, on prompts drawn from the world.

Prompts are the captions of scenes ``0 … count − 1`` of ``ShapesWorld(EVAL_SEED)``; every model starts from
the same noise (:func:`~stitchkit.shapes.sampling.initial_noise` of ``seed``), so the small model's
pictures can be compared with the large model's one by one (feature distance, PSNR, SSIM), and the
Fréchet distance is taken against the rendered pictures of the same captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from stitchkit.shapes import scores as metrics
from stitchkit.shapes.pair import DEFAULT_GUIDANCE, DEFAULT_STEPS, ShapesPair
from stitchkit.shapes.sampling import initial_noise, sample
from stitchkit.shapes.world import ShapesWorld, render_arrays

#: World seed of the evaluation prompts (neither the pair's nor the classifier's training seed).
EVAL_SEED = 7


def eval_prompts(count: int, seed: int = EVAL_SEED) -> list[str]:
    return [c.to_text() for c in ShapesWorld(seed=seed).captions(0, count)]


@torch.no_grad()
def generate(pair: ShapesPair, which: str, prompts: Sequence[str], seed: int, *, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch_size: int = 100) -> torch.Tensor:
    """:func:`sample` over ``prompts`` in chunks, every prompt with its own slice of seed ``seed``'s noise."""
    noise = initial_noise(pair, len(prompts), seed)
    parts = [sample(pair, which, prompts[i:i + batch_size], seed, steps=steps, guidance=guidance,
                    noise=noise[i:i + batch_size]).cpu() for i in range(0, len(prompts), batch_size)]
    return torch.cat(parts)


@torch.no_grad()
def evaluate_pair(pair: ShapesPair, classifier, *, count: int = 200, seed: int = 0,
                  steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, batch_size: int = 100,
                  models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Caption accuracy and Fréchet distance of each model alone; the small model(s) also against the
    large one. ``models`` maps extra names to transformers to measure in the small model's place. The
    report also holds the pictures themselves, ``report["images"][name]`` (pop them before saving)."""
    import attrs

    prompts = eval_prompts(count)
    real = ShapesWorld(seed=EVAL_SEED).batch(0, count).images
    candidates = {"large": pair.large, "small": pair.small, **(models or {})}
    images: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"prompts": count, "seed": seed, "steps": steps, "guidance": guidance}
    for name, model in candidates.items():
        view = attrs.evolve(pair, small=model) if name not in ("large", "small") else pair
        which = "large" if name == "large" else "small"
        images[name] = generate(view, which, prompts, seed, steps=steps, guidance=guidance, batch_size=batch_size)
        entry: dict[str, Any] = {
            "accuracy": metrics.caption_accuracy(classifier, images[name], prompts),
            "frechet": metrics.frechet_feature_distance(classifier, images[name], real),
        }
        if name != "large":
            ref = images["large"]
            entry["vs_large"] = {
                "feature_distance": float(metrics.feature_distance(classifier, images[name], ref).mean()),
                "psnr": float(metrics.psnr(images[name], ref).clamp_max(100).mean()),
                "ssim": float(metrics.ssim(images[name], ref).mean()),
            }
        report[name] = entry
    # The same captions drawn again with other jitter: what a perfect model would score.
    drawn = ShapesWorld(seed=EVAL_SEED).draw(0, count)
    drawn.update({k: v for k, v in ShapesWorld(seed=EVAL_SEED + 1).draw(0, count).items()
                  if k in ("dx", "dy", "scale")})
    report["real_frechet_floor"] = metrics.frechet_feature_distance(classifier, render_arrays(drawn), real)
    report["images"] = images
    return report
