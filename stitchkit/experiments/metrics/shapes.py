"""Quality metrics of an experiment's images, for the shapes pair (offline stand-ins, not the real thing).

* ``caption_accuracy``: the attribute classifier reads shape, colour, size, position and background back
  from each image; the share with every attribute right (stand-in for the CLIP score);
* ``feature_distance``: LPIPS' recipe on the classifier's feature maps, against the large model's image of
  the same prompt and seed (stand-in for LPIPS);
* ``frechet``: Fréchet distance of classifier embeddings against as many images rendered by the shapes
  world (stand-in for FID);
* ``psnr``, ``ssim``: against the large model's image.

They are computed from the PNGs on disk, so a resumed run scores exactly what it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stitchkit.errors import ConfigError

METRICS = ("caption_accuracy", "feature_distance", "frechet", "psnr", "ssim")
#: Metrics compared with the large-only image of the same prompt and seed.
PAIRED = ("feature_distance", "psnr", "ssim")
#: World seed of the real images the Fréchet distance compares against (not a training seed).
REAL_IMAGES_SEED = 11


def check_metrics(names, pair_name: str | None) -> tuple[str, ...]:
    names = tuple(names)
    for i, name in enumerate(names):
        if name not in METRICS:
            raise ConfigError(f"metrics[{i}]", f"unknown metric {name!r}", "known: " + ", ".join(METRICS))
    if names and pair_name != "shapes":
        raise ConfigError("metrics", "need the shapes pair's attribute classifier", "use pair: shapes, or no metrics")
    return names


def _load(paths: list[Path]):
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def score_methods(config, image_paths: dict[str, list[tuple[str, Path]]], baseline: str) -> dict[str, dict]:
    """``{method: {metric: value}}`` for ``config.metrics``; ``image_paths[method]`` lists (prompt, png)
    units in the same order for every method (the baseline's are the paired reference)."""
    from stitchkit.experiments.metrics import standins as m
    from stitchkit.shapes.classifier import load_classifier
    from stitchkit.shapes.world import ShapesWorld

    if not config.metrics:
        return {}
    classifier = load_classifier()
    reference_units = dict(((p, str(path.name)), path) for p, path in image_paths.get(baseline, []))
    scores: dict[str, dict[str, Any]] = {}
    real = None
    for method, units in image_paths.items():
        if not units:
            continue
        images = _load([path for _, path in units])
        row: dict[str, Any] = {}
        if "caption_accuracy" in config.metrics:
            row["caption_accuracy"] = m.caption_accuracy(classifier, images, [p for p, _ in units])["all"]
        if "frechet" in config.metrics:
            if real is None:
                real = ShapesWorld(seed=REAL_IMAGES_SEED).batch(0, max(len(units), 64)).images
            row["frechet"] = m.frechet_feature_distance(classifier, images, real)
        refs = [reference_units.get((p, str(path.name))) for p, path in units]
        if method != baseline and any(name in config.metrics for name in PAIRED) and all(refs):
            reference = _load(refs)
            if "feature_distance" in config.metrics:
                row["feature_distance"] = float(m.feature_distance(classifier, images, reference).mean())
            if "psnr" in config.metrics:
                row["psnr"] = float(m.psnr(images, reference).mean())  # inf if every image is identical
            if "ssim" in config.metrics:
                row["ssim"] = float(m.ssim(images, reference).mean())
        scores[method] = row
    return scores
