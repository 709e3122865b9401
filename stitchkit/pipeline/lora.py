"""LoRA on both models of a stitched pair, through diffusers' LoRA loaders and peft.

A style LoRA loaded into the large model alone vanishes from every step the small model computes (the
complaint behind ComfyUI-TeaCache#163, there for cached steps). :func:`load_lora` loads an adapter into the
large model, the small one or both, under one adapter name:

* the large model through its pipeline's ``load_lora_weights`` (diffusers' LoRA loader mixin of the family:
  ``FluxLoraLoaderMixin``, ``SD3LoraLoaderMixin``, ``WanLoraLoaderMixin``; it converts other checkpoint
  formats and loads text-encoder layers too);
* the small model through ``ModelMixin.load_lora_adapter`` (diffusers' ``PeftAdapterMixin``), on the state
  dict the same mixin's ``lora_state_dict`` reads (same conversion). A LoRA trained for the large model fits
  a small one of the same width (FLUX.1-dev and Flux.1 Lite 8B); for another width, load the small model's
  own LoRA with ``into="small"`` under the same name.

One scale then reaches every model that has the adapter: :func:`set_adapters` sets the adapters' weights on
each model holding them, and a call's ``joint_attention_kwargs={"scale": s}`` scales both transformers for
that generation (:func:`stitchkit.pipeline.conventions.scaled_lora`). The masked forwards run the models'
own (peft-wrapped) linear layers, so hybrid steps carry the LoRA as well.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from stitchkit.errors import ConfigError

logger = logging.getLogger(__name__)

#: Which models ``into=`` may name.
TARGETS = ("large", "small", "both")


def _state_dict(pipeline: Any, weights: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """``weights`` (a path, hub id or state dict) in diffusers' keys, read by the pipeline's LoRA loader."""
    if isinstance(weights, Mapping):
        weights = dict(weights)  # diffusers' readers pop keys
    reader = getattr(pipeline, "lora_state_dict", None)
    if reader is None:
        if not isinstance(weights, dict):
            raise ConfigError("lora", f"{type(pipeline).__name__} has no LoRA loader to read {weights!r}",
                              "pass the LoRA as a state dict in diffusers' keys "
                              "('transformer.<module>.lora_A.weight')")
        return weights
    state = reader(weights, **kwargs)
    return dict(state[0] if isinstance(state, tuple) else state)


def loaded_adapters(model: torch.nn.Module) -> tuple[str, ...]:
    """The LoRA adapters loaded into ``model`` (peft's ``peft_config``), in load order."""
    return tuple(getattr(model, "peft_config", None) or ())


def _default_name(models: Sequence[torch.nn.Module]) -> str:
    """diffusers' default adapter name (``default_<n>``), unused in every one of ``models``."""
    taken = {name for model in models for name in loaded_adapters(model)}
    return next(f"default_{i}" for i in range(len(taken) + 1) if f"default_{i}" not in taken)


def load_lora(pipeline: Any, large: torch.nn.Module, small: torch.nn.Module, weights: Any, *,
              adapter_name: str | None = None, into: str = "both", **kwargs: Any) -> str:
    """Load ``weights`` as adapter ``adapter_name`` into ``into`` (``"large"``, ``"small"`` or ``"both"``);
    ``pipeline``: the large model's diffusers pipeline (its LoRA loader), or ``None``. Returns the adapter's
    name (diffusers' ``default_<n>`` when none is given). Extra keyword arguments go to diffusers' reader
    (``weight_name``, ``local_files_only``, ...)."""
    if into not in TARGETS:
        raise ConfigError("into", f"{into!r} is not a model of the pair", "allowed: " + ", ".join(TARGETS))
    targets = {"large": (large,), "small": (small,), "both": (large, small)}[into]
    name = adapter_name or _default_name(targets)
    for model in targets:
        if name in loaded_adapters(model):
            role = "large" if model is large else "small"
            raise ConfigError("adapter_name", f"{name!r} is already loaded into the {role} model",
                              "give another adapter_name, or unload_lora_weights() first")
    if into in ("large", "both"):
        if hasattr(pipeline, "load_lora_weights"):
            pipeline.load_lora_weights(dict(weights) if isinstance(weights, Mapping) else weights,
                                       adapter_name=name, **kwargs)
        else:
            large.load_lora_adapter(_state_dict(pipeline, weights, **kwargs), prefix="transformer",
                                    adapter_name=name)
    if into in ("small", "both"):
        prefix = getattr(pipeline, "transformer_name", "transformer")
        try:
            small.load_lora_adapter(_state_dict(pipeline, weights, **kwargs), prefix=prefix, adapter_name=name)
        except RuntimeError as err:  # peft's size mismatch: a LoRA of another width
            if into == "both":  # leave no half-loaded adapter behind
                (getattr(pipeline, "delete_adapters", None) or large.delete_adapters)(name)
            raise ConfigError("lora", f"does not fit the small transformer ({str(err).splitlines()[0][:160]})",
                              "load the small model's own LoRA with into='small' under the same adapter_name"
                              ) from None
    logger.info("LoRA %r loaded into the %s model%s", name, into, "s" if into == "both" else "")
    return name


def set_adapters(pipeline: Any, large: torch.nn.Module, small: torch.nn.Module, adapter_names: Sequence[str] | str,
                 adapter_weights: Sequence[float] | float | None = None) -> None:
    """Activate ``adapter_names`` with ``adapter_weights`` (one number: all of them) on every model holding
    them: the large pipeline (its transformer and text encoders, diffusers' ``set_adapters``) or the large
    transformer, and the small transformer."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    weights = adapter_weights if isinstance(adapter_weights, Sequence) else [adapter_weights] * len(names)
    if len(weights) != len(names):
        raise ConfigError("adapter_weights", f"{len(weights)} weights for {len(names)} adapters", "one per adapter")
    known = set(loaded_adapters(large)) | set(loaded_adapters(small))
    for name in names:
        if name not in known:
            raise ConfigError("adapter_names", f"{name!r} is not loaded",
                              "loaded: " + (", ".join(sorted(known)) or "none"))
    for model, setter in ((large, getattr(pipeline, "set_adapters", None)), (small, None)):
        mine = [(n, w) for n, w in zip(names, weights) if n in loaded_adapters(model)]
        if not mine:
            continue
        setter = setter or model.set_adapters
        setter([n for n, _ in mine], [w for _, w in mine])


def unload_lora(pipeline: Any, large: torch.nn.Module, small: torch.nn.Module) -> None:
    """Remove every LoRA adapter from both models (and the large pipeline's text encoders)."""
    if hasattr(pipeline, "unload_lora_weights"):
        pipeline.unload_lora_weights()
    elif loaded_adapters(large):
        large.unload_lora()
    if loaded_adapters(small):
        small.unload_lora()
