"""Offline quality metrics: the stand-ins stitchkit uses for the paper's CLIP score, LPIPS and FID.

Neither a laptop nor CI can download CLIP, LPIPS's AlexNet or FID's Inception network, so on the shipped
shapes pair the judge is :class:`stitchkit.shapes.classifier.AttributeClassifier`, a small CNN trained on
the shapes world itself:

* :func:`caption_accuracy`: how often the classifier reads back every attribute of the prompt (per
  attribute and all at once). **A stand-in for the CLIP score**: both ask "does the picture match the text".
* :func:`feature_distance`: LPIPS' recipe (unit-normalise each layer's channels, squared difference, mean
  over positions, summed over layers) on the classifier's feature maps instead of AlexNet's, between a
  method's picture and the large model's from the same prompt and seed. **A stand-in for LPIPS**.
* :func:`frechet_distance` of the classifier's embeddings of generated pictures against rendered ones.
  **A stand-in for FID** (same formula, a different network; values are not comparable with FID's).
* :func:`psnr` and :func:`ssim` against the large model's picture, computed by torchmetrics
  (``peak_signal_noise_ratio``, ``structural_similarity_index_measure``) at its defaults for SSIM (11×11
  Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, Wang et al. 2004) with data range 1: the numbers papers
  quote, not a hand-written variant of them.

Pictures are ``(B, 3, H, W)`` in ``[-1, 1]``; per-picture metrics return ``(B,)`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from stitchkit.shapes.classifier import accuracy
from stitchkit.shapes.world import labels_of, parse_caption

if TYPE_CHECKING:
    from stitchkit.shapes.classifier import AttributeClassifier
    from stitchkit.shapes.world import Caption


def _unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` to ``[0, 1]``, float64."""
    return (images.detach().to(torch.float64) + 1.0) / 2.0


def _check_pair(images: torch.Tensor, reference: torch.Tensor) -> None:
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape, got {tuple(images.shape)} "
                         f"and {tuple(reference.shape)}")


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per picture (pictures in ``[-1, 1]``, peak 1 after mapping to
    ``[0, 1]``); ``inf`` for identical pictures. torchmetrics' ``peak_signal_noise_ratio``, per picture."""
    _check_pair(images, reference)
    return peak_signal_noise_ratio(_unit(images), _unit(reference), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity per picture (mean over channels and window positions), in ``[-1, 1]``:
    torchmetrics' ``structural_similarity_index_measure`` at its defaults, data range 1."""
    _check_pair(images, reference)
    return structural_similarity_index_measure(_unit(images), _unit(reference), data_range=1.0, reduction="none")


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``, float64."""
    f = features.detach().to(torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"expected (N, D) features with N >= 2, got {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_gaussians(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)``: the Fréchet distance of two Gaussians.

    Computed with symmetric eigen-decompositions, so it needs no scipy and never goes complex.
    """
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt
    return float(value.clamp_min(0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_gaussians(*gaussian_stats(features_a), *gaussian_stats(features_b))


# --- metrics read through the shapes classifier ----------------------------------------------------------

@torch.no_grad()
def classifier_features(classifier: AttributeClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The classifier's embedding of each picture, ``(B, D)`` on the CPU."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def caption_accuracy(classifier: AttributeClassifier, images: torch.Tensor,
                     captions: Sequence[Caption | str]) -> dict[str, float]:
    """Fraction of pictures whose classified attribute matches the caption, per attribute and ``"all"``
    (every attribute right). Our offline stand-in for the CLIP score."""

    if len(captions) != len(images):
        raise ValueError(f"{len(images)} pictures but {len(captions)} captions")
    parsed = [parse_caption(c) if isinstance(c, str) else c for c in captions]
    return accuracy(classifier.predict(images), labels_of(parsed))


@torch.no_grad()
def feature_distance(classifier: AttributeClassifier, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """LPIPS' recipe on the classifier's feature maps, per picture ``(B,)``; 0 for identical pictures.
    Our offline stand-in for LPIPS."""
    _check_pair(images, reference)
    device = next(classifier.parameters()).device
    total = torch.zeros(len(images), dtype=torch.float64)
    for a, b in zip(classifier.feature_maps(images.to(device)), classifier.feature_maps(reference.to(device))):
        a = a.double() / (a.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b.double() / (b.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += (a - b).pow(2).sum(1).mean((1, 2)).cpu()
    return total


def frechet_feature_distance(classifier: AttributeClassifier, images: torch.Tensor,
                             real_images: torch.Tensor) -> float:
    """Fréchet distance of the classifier's embeddings of ``images`` against ``real_images`` (rendered by
    the shapes world). Our offline stand-in for FID."""
    return frechet_distance(classifier_features(classifier, images), classifier_features(classifier, real_images))
