"""An attribute classifier for the shapes world: the judge behind stitchkit's offline quality metrics.

A small CNN with one head per caption attribute (shape, colour, size, position, background), trained on
the world's own pictures with light noise and blur, so that it reads generated pictures too. Its heads
give caption accuracy (our stand-in for the CLIP score), its feature maps an LPIPS-like distance, and its
embedding a Fréchet distance (our stand-in for FID): see :mod:`stitchkit.shapes.scores`.

The trained classifier ships beside the pair, in ``stitchkit/pairs/shapes/classifier/``
(``model.safetensors`` and ``config.json``, which records its held-out accuracy).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from stitchkit.errors import ConfigError
from stitchkit.shapes.world import ATTRIBUTES, ShapesWorld, render_arrays

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "pairs" / "shapes" / "classifier"
#: World seed of the pictures the classifier's held-out accuracy is measured on (never trained on).
HELD_OUT_SEED = 20_250_101


class AttributeClassifier(nn.Module):
    """``(B, 3, 32, 32)`` in ``[-1, 1]`` → logits per attribute; ``features`` is the ``embed_dim`` vector
    the Fréchet distance reads, ``feature_maps`` the per-layer maps the LPIPS-like distance reads."""

    def __init__(self, width: int = 32, embed_dim: int = 128, resolution: int = 32) -> None:
        super().__init__()
        w = width
        self.config = {"width": width, "embed_dim": embed_dim, "resolution": resolution}
        self.blocks = nn.ModuleList([
            _conv(3, w, stride=1),          # 32
            _conv(w, 2 * w, stride=2),      # 16
            _conv(2 * w, 2 * w, stride=1),  # 16
            _conv(2 * w, 4 * w, stride=2),  # 8
            _conv(4 * w, 4 * w, stride=2),  # 4
        ])
        side = resolution // 8
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, embed_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(values)) for name, values in ATTRIBUTES.items()})

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], images
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.feature_maps(images)[-1])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.features(images)
        return {name: head(z) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Predicted label per attribute, ``(B,)`` int64 each."""
        device = next(self.parameters()).device
        parts = [self(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
        return {name: torch.cat([p[name] for p in parts]).argmax(-1).cpu() for name in ATTRIBUTES}


def _conv(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


def accuracy(predicted: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction right per attribute, and ``"all"``: every attribute right."""
    hits = {name: (predicted[name].cpu() == labels[name].cpu()) for name in ATTRIBUTES}
    result = {name: float(h.float().mean()) for name, h in hits.items()}
    result["all"] = float(torch.stack(list(hits.values())).all(0).float().mean())
    return result


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light blur on some pictures and Gaussian noise of random strength on all: generated pictures are
    neither as sharp nor as clean as rendered ones."""
    b = images.shape[0]
    device = images.device
    blur = torch.rand(b, 1, 1, 1, generator=generator, device=device) < 0.3
    kernel = torch.tensor([0.25, 0.5, 0.25], device=device)
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    images = torch.where(blur, blurred, images)
    strength = 0.12 * torch.rand(b, 1, 1, 1, generator=generator, device=device)
    return images + strength * torch.randn(images.shape, generator=generator, device=device)


@attrs.frozen(kw_only=True)
class ClassifierTraining:
    seed: int = 1
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    embed_dim: int = 128


def train_classifier(config: ClassifierTraining = ClassifierTraining(), *, device: str | torch.device = "cpu",
                     progress: bool = True) -> AttributeClassifier:
    """Train a classifier on world ``config.seed`` (one fresh batch a step, cosine learning rate)."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    model = AttributeClassifier(width=config.width, embed_dim=config.embed_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.05)
    world = ShapesWorld(seed=config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)
    model.train()
    bar = tqdm(range(config.steps), desc="classifier", disable=not progress)
    for step in bar:
        drawn = world.draw(step * config.batch_size, config.batch_size)
        images = render_arrays(drawn, resolution=world.resolution, device=device)
        logits = model(_augment(images, generator))
        loss = sum(F.cross_entropy(logits[name], torch.as_tensor(drawn[name]).to(device)) for name in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()


def held_out_accuracy(model: AttributeClassifier, count: int = 2000, seed: int = HELD_OUT_SEED,
                      noise: float = 0.0) -> dict[str, float]:
    """Accuracy on ``count`` fresh pictures of world ``seed`` (plus Gaussian noise of std ``noise``)."""
    device = next(model.parameters()).device
    batch = ShapesWorld(seed=seed).batch(0, count, device=device)
    images = batch.images
    if noise:
        images = images + noise * torch.randn(images.shape, generator=torch.Generator(device).manual_seed(seed),
                                              device=device)
    return accuracy(model.predict(images), batch.labels)


def save_classifier(model: AttributeClassifier, path: str | os.PathLike = DEFAULT_PATH, *,
                    metadata: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model.safetensors`` (in ``dtype``) and ``config.json`` into ``path``, each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = path / f".model.safetensors.{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, path / "model.safetensors")
    tmp = path / f".config.json.{os.getpid()}"
    tmp.write_text(json.dumps({**model.config, **(metadata or {})}, indent=2) + "\n")
    os.replace(tmp, path / "config.json")
    return path


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Load a saved classifier (by default the shipped one), float32, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_PATH
    if not (path / "model.safetensors").is_file():
        raise ConfigError("classifier.path", f"no classifier at {path}", "expected model.safetensors, config.json")
    config = json.loads((path / "config.json").read_text())
    model = AttributeClassifier(width=config["width"], embed_dim=config["embed_dim"],
                                resolution=config.get("resolution", 32))
    state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def classifier_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The saved classifier's ``config.json`` (architecture and measured accuracy)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    return json.loads((path / "config.json").read_text())


def main(steps: int = 3000, out: str | os.PathLike = DEFAULT_PATH) -> None:  # pragma: no cover - a script
    """Train, measure and save the shipped classifier (``python -m stitchkit.shapes.classifier``)."""
    config = ClassifierTraining(steps=steps)
    start = time.perf_counter()
    model = train_classifier(config)
    minutes = (time.perf_counter() - start) / 60
    clean = held_out_accuracy(model)
    noisy = held_out_accuracy(model, noise=0.1)
    print("held-out accuracy (clean):", json.dumps(clean))
    print("held-out accuracy (noise 0.1):", json.dumps(noisy))
    save_classifier(model, out, metadata={"training": attrs.asdict(config), "minutes": round(minutes, 2),
                                          "held_out_seed": HELD_OUT_SEED, "held_out_accuracy": clean,
                                          "held_out_accuracy_noise_0.1": noisy})


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(*(int(a) for a in sys.argv[1:2]))
