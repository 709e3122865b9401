"""CLIP score (Hessel et al. 2021) with torchmetrics' ``CLIPScore``: 100 · max(cos(image, prompt), 0).

    metrics: [{kind: clip_score}]                              # openai/clip-vit-large-patch14 from the HF cache
    metrics: [{kind: clip_score, model: /models/clip-vit-large-patch14}]
    metrics: [{kind: clip_score, download: true}]              # let transformers download it

The model and processor are loaded with transformers (``local_files_only`` unless ``download``), and
torchmetrics computes the score with them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterable

import attrs

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.base import MetricBatch, hf_cached, pick_device

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def _embeddings(output):
    """transformers >= 5 returns a model output from ``get_*_features``; its ``pooler_output`` is the
    projected embedding torchmetrics (written for transformers 4) expects as a tensor."""
    return getattr(output, "pooler_output", output)


class _Features:
    """A CLIPModel whose ``get_image_features`` / ``get_text_features`` return tensors on every
    transformers version, as torchmetrics' CLIPScore expects."""

    def __init__(self, model) -> None:
        self.model, self.config = model, model.config

    def to(self, device):
        self.model.to(device)
        return self

    def get_image_features(self, *args, **kwargs):
        return _embeddings(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return _embeddings(self.model.get_text_features(*args, **kwargs))


def _is_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


@attrs.define
class CLIPScore:
    model: str = DEFAULT_MODEL
    download: bool = False
    device: str | None = None  # default: CUDA when there is one

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

    def check_prompt(self, prompt: str) -> str | None:
        """CLIP's text encoder reads at most ``max_position_embeddings`` tokens (77), start and end tokens
        included; torchmetrics cuts a longer prompt and scores the image against its first part only."""
        if self._text_reader is None:  # not readable here (download: true, not yet cached): left to torchmetrics
            return None
        tokenizer, limit = self._text_reader
        count = len(tokenizer(prompt, verbose=False)["input_ids"])
        if count > limit:
            return f"{count} CLIP tokens, past the {limit} CLIP reads (clip_score would score its first part only)"
        return None

    @cached_property
    def _text_reader(self):
        """``(tokenizer, token limit)`` from the local files (no weights loaded), or ``None``."""
        from transformers import CLIPConfig, CLIPTokenizerFast

        path = str(Path(self.model).expanduser()) if _is_path(self.model) else self.model
        try:
            limit = CLIPConfig.from_pretrained(path, local_files_only=True).text_config.max_position_embeddings
            return CLIPTokenizerFast.from_pretrained(path, local_files_only=True), limit
        except OSError:
            return None

    def _load(self):
        from transformers import CLIPModel, CLIPProcessor

        local = not self.download
        path = str(Path(self.model).expanduser()) if _is_path(self.model) else self.model
        return (_Features(CLIPModel.from_pretrained(path, local_files_only=local).eval()),
                CLIPProcessor.from_pretrained(path, local_files_only=local))

    def score(self, batches: Iterable[MetricBatch]) -> float:
        import torch
        from torchmetrics.multimodal.clip_score import CLIPScore as _CLIPScore

        device = pick_device(self.device)
        metric = _CLIPScore(model_name_or_path=self._load).to(device)
        with torch.no_grad():  # torchmetrics moves the model to the images' device
            for b in batches:
                pixels = ((b.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                metric.update(pixels.to(device), list(b.prompts))
            return float(metric.compute())
