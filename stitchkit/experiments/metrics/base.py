"""What a metric plugin is, and the batches the runner feeds it.

A metric is an object made by the factory a plugin registers through ``register_metrics`` (see
:mod:`stitchkit.hookspecs`). It declares what it needs and how to read its value; the runner loads the
images of one method from disk in batches and hands them over, so 5,000 images at 768² never sit in
memory at once.

``needs`` is drawn from:

* ``"image"``: the method's images (always fed);
* ``"prompt"``: each image's prompt (CLIP score);
* ``"large_image"``: the large-only image of the same prompt and seed (LPIPS, PSNR, SSIM). Such a metric
  is not computed for the large-only method itself, and needs ``large`` among the methods;
* ``"reference_set"``: a set of real images it reads itself (FID's reference folder or statistics).

A metric that reads prompts may also have ``check_prompt(prompt) -> str | None``: the reason it cannot
score that prompt (the shapes classifier parses a caption grammar; CLIP reads at most 77 tokens), or
``None``. The run asks it of every prompt before any model is loaded
(:func:`stitchkit.experiments.preflight.check_prompts`); a metric without it reads any prompt.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, Sequence, runtime_checkable

import attrs

NEEDS = ("image", "prompt", "large_image", "reference_set")


@attrs.frozen(kw_only=True)
class MetricBatch:
    """A batch of one method's images, ``(B, 3, H, W)`` float32 in ``[-1, 1]``."""

    images: "torch.Tensor"  # noqa: F821
    prompts: Sequence[str]
    large_images: "torch.Tensor | None" = None  # noqa: F821


@runtime_checkable
class Metric(Protocol):
    label: str  # the column header of results.md, e.g. "CLIP score"
    unit: str  # "", "dB", ...
    higher_is_better: bool
    needs: frozenset[str]
    per_image: bool  # the mean of a per-image value (True) or one value of the whole set (False)
    digits: int  # decimals in results.md

    def check(self, *, pair_name: str | None) -> None:
        """Raise :class:`stitchkit.errors.ConfigError` if this metric cannot run here (weights, pair)."""

    def score(self, batches: Iterable[MetricBatch]) -> float:
        """The metric over every batch of one method."""


def load_images(paths: Sequence) -> "torch.Tensor":  # noqa: F821
    """PNG files as ``(B, 3, H, W)`` float32 in ``[-1, 1]``."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def batches(paths: Sequence, prompts: Sequence[str], large_paths: Sequence | None = None,
            size: int = 32) -> Iterator[MetricBatch]:
    """The units of one method, ``size`` at a time."""
    for i in range(0, len(paths), size):
        yield MetricBatch(images=load_images(paths[i:i + size]), prompts=list(prompts[i:i + size]),
                          large_images=None if large_paths is None else load_images(large_paths[i:i + size]))


def weighted_mean(batches: Iterable[MetricBatch], per_batch) -> float:
    """The mean over images of a per-image value, ``per_batch(batch)`` giving the batch's ``(B,)`` values."""
    total, count = 0.0, 0
    for batch in batches:
        values = per_batch(batch)
        total += float(values.double().sum())
        count += len(values)
    return total / count if count else float("nan")


def pick_device(device: str | None) -> str:
    """The device a metric's network runs on: the one given, else CUDA when there is one."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def hf_cached(repo_id: str) -> bool:
    """Whether a Hugging Face model is in the user's cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)
