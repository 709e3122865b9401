"""The shapes pair's offline stand-in metrics, as metric plugins (not the real thing; see :mod:`stitchkit.shapes.scores`).

* ``caption_accuracy``: the attribute classifier reads shape, colour, size, position and background back
  from each image; the share with every attribute right (stand-in for the CLIP score);
* ``feature_distance``: LPIPS' recipe on the classifier's feature maps, against the large model's image of
  the same prompt and seed (stand-in for LPIPS);
* ``frechet``: Fréchet distance of classifier embeddings against as many images rendered by the shapes
  world (stand-in for FID).

They are computed from the PNGs on disk, so a resumed run scores exactly what it wrote.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.base import MetricBatch, weighted_mean

#: World seed of the real images the Fréchet distance compares against (not a training seed).
REAL_IMAGES_SEED = 11
#: The fewest rendered images the Fréchet stand-in compares against.
MIN_REAL_IMAGES = 64


@attrs.define
class _ShapesMetric:
    """A metric read through the shapes pair's attribute classifier."""

    def check(self, *, pair_name: str | None) -> None:
        from stitchkit.shapes.pair import SHIPPED_PAIRS

        if pair_name not in SHIPPED_PAIRS:
            raise ConfigError("", f"{self.kind} needs the shapes pair's attribute classifier",
                              f"use pair: {' or '.join(SHIPPED_PAIRS)}, or another metric (psnr, ssim, fid, "
                              "clip_score, lpips)")

    @cached_property
    def classifier(self):
        from stitchkit.shapes.classifier import load_classifier

        return load_classifier()


@attrs.define
class CaptionAccuracy(_ShapesMetric):
    kind = "caption_accuracy"
    label = "caption accuracy (CLIP stand-in)"
    unit = ""
    higher_is_better = True
    needs = frozenset({"image", "prompt"})
    per_image = True
    digits = 3

    def check_prompt(self, prompt: str) -> str | None:
        """The classifier reads attributes back against the caption parsed from the prompt: it must parse."""
        from stitchkit.shapes.world import parse_caption

        try:
            parse_caption(prompt)
        except ConfigError as err:
            why = f"{err.problem} ({err.allowed})" if err.allowed else err.problem
            return f"{self.kind} reads shapes captions only: {why}"
        return None

    def score(self, batches: Iterable[MetricBatch]) -> float:
        from stitchkit.shapes.scores import caption_accuracy

        total = count = 0.0
        for b in batches:
            total += caption_accuracy(self.classifier, b.images, list(b.prompts))["all"] * len(b.images)
            count += len(b.images)
        return total / count


@attrs.define
class FeatureDistance(_ShapesMetric):
    kind = "feature_distance"
    label = "feature distance (LPIPS stand-in)"
    unit = ""
    higher_is_better = False
    needs = frozenset({"image", "large_image"})
    per_image = True
    digits = 4

    def score(self, batches: Iterable[MetricBatch]) -> float:
        from stitchkit.shapes.scores import feature_distance

        return weighted_mean(batches, lambda b: feature_distance(self.classifier, b.images, b.large_images))


@attrs.define
class Frechet(_ShapesMetric):
    kind = "frechet"
    label = "Fréchet distance (FID stand-in)"
    unit = ""
    higher_is_better = False
    needs = frozenset({"image", "reference_set"})
    per_image = False
    digits = 2
    #: Below this many images per method the number is marked unreliable (:mod:`..reliability`): the
    #: classifier's embeddings have 128 dimensions, so fewer images leave the covariance singular; 200 is
    #: what the README's tables use (16 images gave 995.7 for the large model itself).
    min_images = 200

    def score(self, batches: Iterable[MetricBatch]) -> float:
        import torch

        from stitchkit.shapes.scores import classifier_features, frechet_distance
        from stitchkit.shapes.world import ShapesWorld

        features = torch.cat([classifier_features(self.classifier, b.images) for b in batches])
        real = ShapesWorld(seed=REAL_IMAGES_SEED).batch(0, max(len(features), MIN_REAL_IMAGES)).images
        return frechet_distance(features, classifier_features(self.classifier, real))
