"""FID (Heusel et al. 2017) with torchmetrics' ``FrechetInceptionDistance``: the paper's image-quality metric.

    metrics: [{kind: fid, reference: coco_val2014/}]                 # torch-fidelity's Inception (paper)
    metrics: [{kind: fid, reference: coco_stats.npz, features: my_features.pt}]   # any feature network

``reference`` is a folder of real images (each centre-cropped to a square and resized to the generated
size) or a ``.npz`` of their feature statistics (``mu``, ``sigma``; optionally ``n``), computed with the same
feature network. The standard features are torch-fidelity's Inception-v3 port (2048-d pool features),
weights ``weights-inception-2015-12-05-6726825d.pth`` from ``weights:``, the torch hub cache, or a
download the user enables. torch-fidelity imports torchvision, which must match the installed torch; where
it cannot be imported, ``features:`` takes any TorchScript module mapping ``(N, 3, H, W)`` floats in
``[0, 1]`` to ``(N, D)`` features, and torchmetrics computes the distance with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.base import MetricBatch, pick_device
from stitchkit.experiments.metrics.weights import file_weights

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _inception_available() -> str | None:
    """``None`` if torch-fidelity's Inception can be imported, else why not."""
    try:
        import torch_fidelity.feature_extractor_inceptionv3  # noqa: F401
    except Exception as err:  # ImportError, or torchvision failing against this torch
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip(": ")
    return None


def reference_images(folder: Path, size: tuple[int, int], batch: int = 32):
    """The folder's images, centre-cropped square and resized to ``size``, ``(B, 3, H, W)`` in ``[0, 1]``."""
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for i in range(0, len(files), batch):
        arrays = []
        for f in files[i:i + batch]:
            image = Image.open(f).convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size[1], size[0]), Image.BICUBIC)
            arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@attrs.define
class FID:
    reference: str | None = None
    features: str | None = None
    weights: str | None = None
    download: bool = False
    device: str | None = None  # default: CUDA when there is one

    kind = "fid"
    label = "FID"
    unit = ""
    higher_is_better = False
    needs = frozenset({"image", "reference_set"})
    per_image = False
    digits = 2
    #: Inception's pool features have 2,048 dimensions: fewer images leave the covariance singular, and the
    #: table marks the number unreliable (:mod:`..reliability`); the paper uses 5,000.
    min_images = 2048

    def check(self, *, pair_name: str | None) -> None:
        if self.reference is None:
            raise ConfigError("reference", "missing: fid compares against real images",
                              "a folder of real images (e.g. COCO val2014) or a .npz of their statistics (mu, sigma)")
        reference = Path(self.reference).expanduser()
        if not reference.exists() or (reference.is_file() and reference.suffix != ".npz"):
            raise ConfigError("reference", f"no such folder or .npz: {reference}", "real images or their statistics")
        if self.features is not None:
            if not Path(self.features).expanduser().is_file():
                raise ConfigError("features", f"no such file: {self.features}", "a TorchScript feature module (.pt)")
            return
        why = _inception_available()
        if why is not None:
            raise ConfigError("", f"fid needs torch-fidelity's Inception network, which does not import here ({why})",
                              "install torch-fidelity with a torchvision matching this torch, "
                              "or give features: PATH of a TorchScript feature module")
        file_weights("fid", self.weights, INCEPTION_WEIGHTS, self.download, "Inception weights")

    def _metric(self):
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance

        if self.features is not None:
            module = torch.jit.load(str(Path(self.features).expanduser()), map_location="cpu").eval()
            return FrechetInceptionDistance(feature=module, normalize=True)
        weights = file_weights("fid", self.weights, INCEPTION_WEIGHTS, self.download, "Inception weights")
        return FrechetInceptionDistance(feature=2048, normalize=True,
                                        feature_extractor_weights_path=None if weights is None else str(weights))

    def score(self, batches: Iterable[MetricBatch]) -> float:
        import numpy as np
        import torch

        device = pick_device(self.device)
        metric = self._metric().to(device)
        size = None
        with torch.no_grad():
            for b in batches:
                size = tuple(b.images.shape[-2:])
                metric.update(((b.images + 1) / 2).to(device), real=False)
            reference = Path(self.reference).expanduser()
            if reference.suffix == ".npz":
                stats = np.load(reference)
                mu, sigma = (torch.as_tensor(stats[k], dtype=torch.float64) for k in ("mu", "sigma"))
                n = int(stats["n"]) if "n" in stats else 2
                # torchmetrics keeps sums; these give back exactly mu and sigma in its compute().
                metric.real_features_sum = (n * mu).to(device)
                metric.real_features_cov_sum = ((n - 1) * sigma + n * torch.outer(mu, mu)).to(device)
                metric.real_features_num_samples = torch.tensor(n, device=device)
            else:
                for real in reference_images(reference, size):
                    metric.update(real.to(device), real=True)
            return float(metric.compute())
