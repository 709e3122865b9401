"""PSNR and SSIM of each image against the large-only image of the same prompt and seed (any pair).

The definitions are :func:`stitchkit.shapes.scores.psnr` / ``ssim`` (torchmetrics' own, tested there against
hand computations); here they are metric plugins.
"""

from __future__ import annotations

from typing import Iterable

import attrs

from stitchkit.experiments.metrics.base import MetricBatch, weighted_mean
from stitchkit.shapes.scores import psnr, ssim


@attrs.define
class PSNR:
    kind = "psnr"
    label = "PSNR vs large"
    unit = "dB"
    higher_is_better = True
    needs = frozenset({"image", "large_image"})
    per_image = True
    digits = 2

    def check(self, *, pair_name: str | None) -> None:
        """Needs no weights."""

    def score(self, batches: Iterable[MetricBatch]) -> float:  # inf if every image is identical

        return weighted_mean(batches, lambda b: psnr(b.images, b.large_images))


@attrs.define
class SSIM:
    kind = "ssim"
    label = "SSIM vs large"
    unit = ""
    higher_is_better = True
    needs = frozenset({"image", "large_image"})
    per_image = True
    digits = 4

    def check(self, *, pair_name: str | None) -> None:
        """Needs no weights."""

    def score(self, batches: Iterable[MetricBatch]) -> float:
        return weighted_mean(batches, lambda b: ssim(b.images, b.large_images))
