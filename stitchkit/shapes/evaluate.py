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


def write_pair_evaluation(path, classifier, *, count: int = 200, seed: int = 0,
                          note: str | None = None) -> dict[str, Any]:
    """Evaluate the pair saved at ``path`` (:func:`evaluate_pair`, both models on ``count`` prompts) and
    write the report into its ``pair.json`` under ``evaluation``, as the shipped pair's is (atomically:
    a temporary file renamed over it). Returns the report without its pictures."""
    import json
    import os
    from pathlib import Path

    from stitchkit.shapes.pair import load_shapes_pair

    path = Path(path)
    pair = load_shapes_pair(path)
    report = evaluate_pair(pair, classifier, count=count, seed=seed)
    report.pop("images")
    report = {"note": note or (f"stitchkit.shapes.evaluate.write_pair_evaluation: {count} prompts of "
                               f"ShapesWorld(seed={EVAL_SEED}), noise seed {seed}, {report['steps']} Euler steps, "
                               f"guidance {report['guidance']:g}; judged by the shipped classifier/ (offline "
                               "stand-ins, see stitchkit.shapes.scores). Measured in float32 on a CPU."),
              **{k: _rounded(v) for k, v in report.items() if k != "seed"}}
    info = json.loads((path / "pair.json").read_text()) if (path / "pair.json").is_file() else {}
    info["evaluation"] = report
    tmp = path / ".pair.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path / "pair.json")
    return report


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m stitchkit.shapes.evaluate PAIR_FOLDER [--count 200]``: measure a saved shapes pair and
    write the figures into its ``pair.json`` (how ``stitchkit/pairs/*/pair.json`` got their ``evaluation``)."""
    import argparse

    from stitchkit.shapes.classifier import load_classifier

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("path")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = write_pair_evaluation(args.path, load_classifier(), count=args.count, seed=args.seed)
    for name in ("large", "small"):
        print(f"{name}: caption accuracy {report[name]['accuracy']['all']:.3f}, "
              f"Frechet {report[name]['frechet']:.2f}"
              + (f", feature distance to large {report[name]['vs_large']['feature_distance']:.4f}"
                 if "vs_large" in report[name] else ""))


if __name__ == "__main__":
    main()
