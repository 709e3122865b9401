"""Recording a K/V-cache processor's keys and values (Algorithm 1, line 6), family-neutral.

Every family's K/V processor keeps ``key``/``value`` buffers, ``(R, L, heads, head_dim)``. What is written
here runs inside the transformer blocks, which ``torch.compile`` traces (:mod:`stitchkit.pipeline.compile`):
the old buffers are read once, into locals, because dynamo guards on what a traced call read, and reading
them again after the assignment would guard on both values (a graph that never matches).
"""

from __future__ import annotations

from typing import Any

import torch


def cache_buffers(processor: Any, shape: tuple[int, ...], key: torch.Tensor,
                  value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``processor``'s cache buffers of ``shape``, allocated anew when missing or unfit (kept otherwise: a
    CUDA graph of a masked call reads them by address)."""
    cached_key, cached_value = processor.key, processor.value
    if (cached_key is None or cached_key.shape != shape or cached_key.dtype != key.dtype
            or cached_key.device != key.device):
        cached_key, cached_value = key.new_empty(shape), value.new_empty(shape)
        processor.key, processor.value = cached_key, cached_value
    return cached_key, cached_value


def record_kv(processor: Any, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor | None,
              cache_rows: int | None) -> None:
    """Store a call's ``key``/``value`` ``(B, L, heads, head_dim)`` as ``processor``'s cache; with ``rows``,
    into those rows of a cache of ``cache_rows`` rows. Without rows the cache is a contiguous copy (the
    refresh writes through a flat view), not the old buffer: a traced call then reads no old cache at all."""
    if rows is None:
        processor.key = key.clone(memory_format=torch.contiguous_format)
        processor.value = value.clone(memory_format=torch.contiguous_format)
        return
    cached_key, cached_value = cache_buffers(processor, (cache_rows, *key.shape[1:]), key, value)
    cached_key.index_copy_(0, rows, key)
    cached_value.index_copy_(0, rows, value)
