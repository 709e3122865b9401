"""Offload hooks for calls that bypass a model's ``forward``.

``DiffusionPipeline.enable_model_cpu_offload`` (accelerate's ``cpu_offload_with_hook``) and
``enable_group_offload`` (diffusers' ``GroupOffloadingHook``, ``diffusers/hooks/group_offloading.py``) move a
model onto its execution device in a hook on ``model.forward``. A masked runner calls the model's submodules
itself (``pos_embed``, the blocks, ``proj_out``), so without :func:`offload_hooks` a hybrid step after an
offload would find the model's weights on the CPU. Leaf-level hooks (sequential offload, group offload at
``leaf_level``) sit on every submodule and fire by themselves; the model-level ones are run here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["has_offload_hooks", "offload_hooks"]

#: The name diffusers registers its group-offloading hook under (``diffusers/hooks/group_offloading.py``).
_GROUP_OFFLOADING = "group_offloading"


def _group_hook(model: torch.nn.Module):
    registry = getattr(model, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(_GROUP_OFFLOADING)


def has_offload_hooks(model: torch.nn.Module) -> bool:
    """Whether any offload hook (accelerate's or diffusers' group offloading) is attached to ``model`` or a
    submodule: its weights may move between calls, so nothing may hold on to their addresses (CUDA graphs)."""
    return any(hasattr(m, "_hf_hook") or _group_hook(m) is not None for m in model.modules())


@contextlib.contextmanager
def offload_hooks(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s own offload hooks around a call that does not go through ``model.forward``, exactly as
    that forward would: accelerate's ``pre_forward`` puts the model on its execution device (and offloads the
    model before it in the chain), diffusers' group hook onloads the model's top-level group; their
    ``post_forward`` runs after, also on error. Without hooks this does nothing."""
    accelerate_hook = getattr(model, "_hf_hook", None)
    group_hook = _group_hook(model)
    if accelerate_hook is not None:
        accelerate_hook.pre_forward(model)
    if group_hook is not None:
        group_hook.pre_forward(model)
    try:
        yield
    finally:
        if group_hook is not None:
            group_hook.post_forward(model, None)
        if accelerate_hook is not None:
            accelerate_hook.post_forward(model, None)
