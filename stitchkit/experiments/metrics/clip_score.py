"""CLIP score (Hessel et al. 2021) with torchmetrics' ``CLIPScore``: 100 · max(cos(image, prompt), 0).

    metrics: [{kind: clip_score}]                              # openai/clip-vit-large-patch14 from the HF cache
    metrics: [{kind: clip_score, model: /models/clip-vit-large-patch14}]
    metrics: [{kind: clip_score, download: true}]              # let transformers download it

The model and processor are loaded with transformers (``local_files_only`` unless ``download``), and
torchmetrics computes the score with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.base import MetricBatch, hf_cached

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def _is_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


@attrs.define
class CLIPScore:
    model: str = DEFAULT_MODEL
    download: bool = False

    kind = "clip_score"
    label = "CLIP score"
    unit = ""
    higher_is_better = True
    needs = frozenset({"image", "prompt"})
    per_image = True
    digits = 2

    def check(self, *, pair_name: str | None) -> None:
        if _is_path(self.model):
            if not (Path(self.model).expanduser() / "config.json").is_file():
                raise ConfigError("model", f"no CLIP model folder at {self.model}",
                                  "a folder with config.json, weights, tokenizer and preprocessor_config.json")
        elif not (hf_cached(self.model) or self.download):
            raise ConfigError("", f"clip_score needs the CLIP weights of {self.model}, not in the Hugging Face cache",
                              "give model: PATH of a CLIP folder, download it into the cache, or set download: true")

    def _load(self):
        from transformers import CLIPModel, CLIPProcessor

        local = not self.download
        path = str(Path(self.model).expanduser()) if _is_path(self.model) else self.model
        return (CLIPModel.from_pretrained(path, local_files_only=local).eval(),
                CLIPProcessor.from_pretrained(path, local_files_only=local))

    def score(self, batches: Iterable[MetricBatch]) -> float:
        import torch
        from torchmetrics.multimodal.clip_score import CLIPScore as _CLIPScore

        metric = _CLIPScore(model_name_or_path=self._load)
        with torch.no_grad():
            for b in batches:
                metric.update(((b.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), list(b.prompts))
            return float(metric.compute())
