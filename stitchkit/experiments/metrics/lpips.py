"""LPIPS (Zhang et al. 2018) against the large model's image, with torchmetrics' LPIPS network.

    metrics: [{kind: lpips}]                             # AlexNet backbone from the torch hub cache
    metrics: [{kind: lpips, net: vgg, weights: /models/vgg16-397923af.pth}]

torchmetrics' LPIPS (its learned linear layers ship inside torchmetrics) takes its backbone from
torchvision, which does not work with every torch (not with this project's 2.13 CPU build). The backbones
are plain ``nn.Sequential`` stacks, so :func:`backbone` builds the same layers as
``torchvision.models.alexnet().features`` / ``vgg16().features`` here and loads torchvision's checkpoint
file into them: torchmetrics' LPIPS then runs unchanged, without torchvision.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.base import MetricBatch, pick_device, weighted_mean
from stitchkit.experiments.metrics.weights import file_weights

#: torchvision's checkpoint file names (what torch.hub caches them as).
CHECKPOINTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def backbone(net: str):
    """torchvision's ``alexnet().features`` / ``vgg16().features`` layer for layer (same state-dict keys)."""
    from torch import nn

    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    layers, channels = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def load_backbone(net: str, weights: Path | None):
    """The backbone with torchvision's checkpoint (``features.*`` keys) loaded, or downloaded by torch.hub."""
    import torch

    model = backbone(net)
    if weights is None:
        url = f"https://download.pytorch.org/models/{CHECKPOINTS[net]}"
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu")
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    model.load_state_dict(features)
    return model


@contextlib.contextmanager
def _torchvision_free(net: str, weights: Path | None):
    """torchmetrics' LPIPS asks ``_get_tv_model_features`` for its backbone: hand it ours."""
    from torchmetrics.functional.image import lpips as tm_lpips

    original = tm_lpips._get_tv_model_features
    tm_lpips._get_tv_model_features = lambda name, pretrained=False: load_backbone(net, weights)
    try:
        yield tm_lpips
    finally:
        tm_lpips._get_tv_model_features = original


def lpips_network(net: str, weights: Path | None):
    """torchmetrics' LPIPS module (``_NoTrainLpips``) with its learned linear layers and our backbone."""
    with _torchvision_free(net, weights) as tm_lpips:
        return tm_lpips._NoTrainLpips(net=net).eval()


@attrs.define
class LPIPS:
    net: str = "alex"
    weights: str | None = None
    download: bool = False
    device: str | None = None  # default: CUDA when there is one

    kind = "lpips"
    label = "LPIPS vs large"
    unit = ""
    higher_is_better = False
    needs = frozenset({"image", "large_image"})
    per_image = True
    digits = 4

    def __attrs_post_init__(self) -> None:
        if self.net not in CHECKPOINTS:
            raise ConfigError("net", f"unknown LPIPS backbone {self.net!r}", "one of " + ", ".join(CHECKPOINTS))

    def check(self, *, pair_name: str | None) -> None:
        from torchmetrics.functional.image import lpips as tm_lpips

        if not all(hasattr(tm_lpips, name) for name in ("_get_tv_model_features", "_NoTrainLpips")):
            raise ConfigError("", "lpips: this torchmetrics version lays out its LPIPS differently",
                              "install torchmetrics 1.4-1.9, the versions this plugin is written against")
        file_weights("lpips", self.weights, CHECKPOINTS[self.net], self.download, f"{self.net} backbone weights")

    def score(self, batches: Iterable[MetricBatch]) -> float:
        import torch

        weights = file_weights("lpips", self.weights, CHECKPOINTS[self.net], self.download,
                               f"{self.net} backbone weights")
        device = pick_device(self.device)
        network = lpips_network(self.net, weights).to(device)
        with torch.no_grad():  # images in [-1, 1], as LPIPS expects
            return weighted_mean(batches, lambda b: network(b.images.to(device), b.large_images.to(device)).flatten())
