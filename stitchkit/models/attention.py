"""Attention for the masked runners' processors, through diffusers' attention-backend dispatch
(family-neutral).

Every family's K/V-cache processor attends with :func:`attend`, which calls
``diffusers.models.attention_dispatch.dispatch_attention_fn`` exactly as diffusers' own dispatching
processors do (``FluxAttnProcessor.__call__``, ``diffusers/models/transformers/transformer_flux.py:121-128``;
``WanAttnProcessor``, ``transformer_wan.py:143-153``): with ``backend=processor._attention_backend``, which
``ModelMixin.set_attention_backend`` sets on every processor that has the attribute
(``modeling_utils.py:659-665``), and which, when ``None``, falls back to the registry's active backend
(``attention_dispatch.py:416-419``; ``set_attention_backend`` and the ``attention_backend`` context manager
set that one). So a backend the user chose for a model (flash, sage, ...) also runs the masked steps that
attend to the cached K/V. With the default (native) backend the call is
``F.scaled_dot_product_attention`` on ``permute(0, 2, 1, 3)`` views, the very kernel and inputs the
processors called before: outputs are bit-identical.

:func:`inherit_backend` copies the backend of the processor a K/V-cache processor replaces (SD3's
``JointAttnProcessor2_0`` has none: its models follow the active backend).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn


class DispatchedAttention:
    """What ``set_attention_backend`` looks for on a processor: the ``_attention_backend`` attribute."""

    _attention_backend = None


def attend(processor: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled-dot-product attention in diffusers' dispatch layout ``(B, S, heads, head_dim)``, in and out,
    on the backend set on ``processor`` (else the active one). No mask: no family here uses one."""
    return dispatch_attention_fn(query, key, value, backend=getattr(processor, "_attention_backend", None))


def inherit_backend(processor: DispatchedAttention, original: Any) -> DispatchedAttention:
    """``processor`` with the attention backend of the ``original`` processor it replaces."""
    processor._attention_backend = getattr(original, "_attention_backend", None)
    return processor
