"""Failures found before any model is loaded, not after loading, warming up or generating everything.

:func:`preflight` checks what the configuration alone can tell (issue 14, "late failures"):

- ``output``: the folder can be created and written to (a probe file is written and removed);
- ``pair.large`` / ``pair.small``: a path that looks like a folder (absolute, ``./``, ``~``) exists;
  a hub id (``org/name``) is left to diffusers;
- ``pair.small``: a small model whose transformer class is not the large one's (read from the folders);
- ``pair.device``: CUDA asked for on a machine without it;
- ``sampler.height`` / ``sampler.width``: for a pair of diffusers folders, a side that is not a multiple
  of the VAE factor times the patch size, or beyond the transformer's position embedding, read from the
  folders' ``config.json`` files (for a built-in pair the adapter checks it once loaded);
- ``prompts[i]``: a prompt one of the metrics cannot read (its ``check_prompt``: the shapes classifier
  parses a caption grammar, CLIP reads at most 77 tokens), found here rather than when the report is
  scored after every image was generated; ``i`` is the prompt's index in its source (``p0003`` in file names).

Each refusal is one :class:`~stitchkit.errors.ConfigError` line naming the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from stitchkit.errors import ConfigError
from stitchkit.experiments.metrics.scoring import build_metrics


def preflight(config, *, create: bool = True) -> None:
    """Refuse, before any model is loaded, what would fail later; ``create=False`` (``run --dry-run``, which
    writes nothing) checks the output folder without creating it."""
    check_output(Path(config.output), create=create)
    check_pair(config)
    check_prompts(config)


def check_pair(config) -> None:
    """What the pair's folders and device tell before loading (also ``stitchkit plan``, which loads the pair)."""
    pair = config.pair
    if pair.name is None:
        for field in ("large", "small"):
            check_model_folder(getattr(pair, field), f"pair.{field}")
        check_same_kind(pair.large, pair.small)
        check_size(pair.large, config.sampler.height, config.sampler.width)
    check_device(pair.device)


def check_output(folder: Path, path: str = "output", *, create: bool = True) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(path, f"{existing} is a file, not a folder", "give a folder for the results")
    if not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(path, f"cannot write to {folder} ({existing} is not writable)",
                              "give a folder you can write to (--output)")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(path, f"cannot write to {folder} ({err.strerror or err})",
                          "give a folder you can write to (--output)") from None


def _looks_local(spec: str) -> bool:
    """A path, not a hub id (``org/name``): absolute, ``./``, ``../``, ``~``, or existing here."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def check_model_folder(spec: str, path: str) -> None:
    """A local path must exist and hold a diffusers pipeline (``model_index.json``) or a model's config."""
    if not _looks_local(spec):
        return  # a hub id: diffusers resolves it (offline: from its cache)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ConfigError(path, f"no such folder {spec!r}", "give a diffusers model folder or a hub id")
    if not any((folder / name).exists() for name in ("model_index.json", "config.json", "transformer")):
        raise ConfigError(path, f"{spec!r} is not a diffusers model folder (no model_index.json)",
                          "give the folder save_pretrained wrote")


def check_device(device: str, path: str = "pair.device") -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(path, f"{device!r} asked for, but this machine has no CUDA device",
                          "use device: cpu, or run on a machine with a GPU")


def _config(folder: Path, sub: str) -> dict[str, Any] | None:
    path = folder / sub / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _transformer_class(spec: str) -> str | None:
    """The transformer class a folder holds: a pipeline's ``transformer/config.json`` or a model's own."""
    if not _looks_local(spec):
        return None
    folder = Path(spec).expanduser()
    config = _config(folder, "transformer") or _config(folder, ".")
    return config.get("_class_name") if isinstance(config, dict) else None


def check_same_kind(large: str, small: str) -> None:
    """Refuse a small model of another kind than the large one (a Wan transformer beside an SD3 pipeline):
    diffusers would load it and fail at the first stitched step."""
    large_kind, small_kind = _transformer_class(large), _transformer_class(small)
    if large_kind and small_kind and large_kind != small_kind:
        raise ConfigError("pair.small", f"holds a {small_kind}, but the large model is a {large_kind}",
                          f"give a small {large_kind} (a pipeline folder of the large one's kind, or its transformer)")


def check_size(large: str, height: int | None, width: int | None) -> None:
    """Sides the pair cannot make, known from its folders' configs (nothing is checked when they are absent)."""
    folder = Path(large).expanduser()
    transformer, vae = _config(folder, "transformer"), _config(folder, "vae")
    if transformer is None or vae is None or "block_out_channels" not in vae:
        return
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    patch = int(transformer.get("patch_size", 1))
    multiple = factor * patch
    largest = transformer.get("pos_embed_max_size")
    for name, side in (("height", height), ("width", width)):
        if side is None:
            continue
        if side % multiple:
            raise ConfigError(f"sampler.{name}", f"{side} is not a multiple of {multiple} (VAE factor {factor} × "
                              f"patch {patch})", f"use a multiple of {multiple}")
        if largest is not None and side > largest * multiple:
            raise ConfigError(f"sampler.{name}", f"{side} is beyond the {largest * multiple} the large model's "
                              "position embedding covers", f"use at most {largest * multiple}")


def check_prompts(config, metrics: dict[str, Any] | None = None) -> None:
    """Refuse the first prompt a metric of the experiment cannot score (``prompts[i]``)."""

    metrics = build_metrics(config) if metrics is None else metrics
    readers = [(j, name, m) for j, (name, m) in enumerate(metrics.items()) if hasattr(m, "check_prompt")]
    for index, prompt in zip(config.prompt_indices, config.prompts):
        for j, name, metric in readers:
            problem = metric.check_prompt(prompt)
            if problem is not None:
                raise ConfigError(f"prompts[{index}]", problem,
                                  f"reword the prompt, or remove {name} (metrics[{j}])")
