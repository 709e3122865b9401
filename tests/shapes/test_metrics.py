"""The offline metrics against hand-computed and independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stitchkit.shapes import scores as metrics
from stitchkit.shapes.classifier import AttributeClassifier
from stitchkit.shapes.world import ShapesWorld, labels_of


def _images(seed: int, n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_psnr_by_hand():
    a = torch.zeros(2, 3, 8, 8)
    b = a + 0.2  # 0.1 apart on the [0, 1] scale: MSE 0.01, PSNR 20 dB
    assert torch.allclose(metrics.psnr(b, a), torch.full((2,), 20.0, dtype=torch.float64))
    assert torch.isinf(metrics.psnr(a, a)).all()


def test_ssim_of_identical_pictures_is_one():
    x = _images(0)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(4, dtype=torch.float64))


def test_ssim_of_flat_pictures_is_the_luminance_term():
    a, b = 0.3, 0.7  # on the [0, 1] scale
    x = torch.full((1, 3, 16, 16), 2 * a - 1)
    y = torch.full((1, 3, 16, 16), 2 * b - 1)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(x, y).item() == pytest.approx(expected, rel=1e-6)  # inputs are float32


def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Direct window-by-window SSIM (Gaussian 11×11, σ 1.5), channels averaged, at every pixel of the
    picture reflected by 5 at its borders: the definition torchmetrics' SSIM computes (its ``_ssim_update``
    pads with ``mode="reflect"`` and averages the full map), which stitchkit's numbers now are."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    x, y = (np.pad(z, ((0, 0), (5, 5), (5, 5)), mode="reflect") for z in (x, y))
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                px, py = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_direct_computation():
    x, y = _images(1, n=2, size=16), _images(2, n=2, size=16)
    y = 0.5 * x + 0.5 * y  # correlated, so the structure term matters
    got = metrics.ssim(x, y)
    for k in range(2):
        expected = _naive_ssim(((x[k].double() + 1) / 2).numpy(), ((y[k].double() + 1) / 2).numpy())
        assert got[k].item() == pytest.approx(expected, abs=1e-9)


def test_frechet_of_identical_sets_is_zero():
    f = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_shifted_sets_is_the_squared_shift():
    f = torch.randn(400, 5, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    assert metrics.frechet_distance(f, f + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-8)


def test_frechet_of_gaussians_by_hand():
    # Diagonal covariances: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) = |dmu|^2 + sum (sqrt s1 - sqrt s2)^2.
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    s1, s2 = torch.tensor([1.0, 4.0]), torch.tensor([9.0, 1.0])
    value = metrics.frechet_gaussians(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert value == pytest.approx(1.0 + (1 - 3) ** 2 + (2 - 1) ** 2)


def test_frechet_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g)
    b = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + 0.3
    mu1, c1 = metrics.gaussian_stats(a)
    mu2, c2 = metrics.gaussian_stats(b)
    root = linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum()) + float(np.trace(c1.numpy() + c2.numpy() - 2 * root))
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


class _Oracle(AttributeClassifier):
    """Answers with given labels, whatever the pictures."""

    def __init__(self, labels):
        super().__init__()
        self._labels = labels

    def predict(self, images, batch_size=512):
        return {k: v.clone() for k, v in self._labels.items()}


def test_caption_accuracy_counts_per_attribute_and_all():
    batch = ShapesWorld(seed=0).batch(0, 4)
    labels = labels_of(batch.captions)
    wrong = {k: v.clone() for k, v in labels.items()}
    wrong["shape"][0] = (wrong["shape"][0] + 1) % 6
    wrong["colour"][1] = (wrong["colour"][1] + 1) % 8
    acc = metrics.caption_accuracy(_Oracle(wrong), batch.images, batch.texts)
    assert acc["shape"] == 0.75 and acc["colour"] == 0.75 and acc["size"] == 1.0
    assert acc["all"] == 0.5


def test_feature_distance_is_zero_for_identical_pictures_and_grows_with_change():
    torch.manual_seed(0)
    judge = AttributeClassifier().eval()
    x = ShapesWorld(seed=0).batch(0, 3).images
    assert torch.allclose(metrics.feature_distance(judge, x, x), torch.zeros(3, dtype=torch.float64))
    near = metrics.feature_distance(judge, x + 0.05 * _images(3, n=3), x)
    far = metrics.feature_distance(judge, x.flip(0), x)
    assert (near > 0).all() and near.mean() < far.mean()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    assert not math.isnan(metrics.ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)).item())
