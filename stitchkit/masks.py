"""The one rule every mask policy shares: how many tokens a ratio means, and which ones Top-k picks.

Algorithm 1, line 23: ``Mask <- Topk(diff)``. A mask at ratio ``r`` over ``N`` tokens has
``k = max(1, floor(r * N + 0.5))`` tokens (``r * N`` rounded half up, at least one), the tokens with the
largest change, per sample, as indices sorted ascending (int64). Ties go to the lower token index, so a
flat change map gives a deterministic mask.

Example::

    >>> import torch
    >>> mask_size(0.3, 10), mask_size(0.25, 10), mask_size(0.01, 10)
    (3, 3, 1)
    >>> top_k_indices(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 2).tolist()
    [[1, 3]]
"""

from __future__ import annotations

import math

import torch

__all__ = ["evenly_spaced_indices", "mask_size", "top_k_indices", "top_k_mask"]


def mask_size(ratio: float, n: int) -> int:
    """How many of ``n`` tokens a mask at ``ratio`` holds: ``max(1, floor(ratio * n + 0.5))``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must be in (0, 1], got {ratio!r}")
    if n < 1:
        raise ValueError(f"need at least one token, got {n}")
    return min(n, max(1, math.floor(ratio * n + 0.5)))


def top_k_indices(change_map: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` tokens with the largest change per sample: ``(B, N) -> (B, k)`` int64, sorted ascending.

    Ties are broken towards the lower token index (a stable descending sort).
    """
    if change_map.ndim != 2:
        raise ValueError(f"change map must be (B, N), got shape {tuple(change_map.shape)}")
    if not 1 <= k <= change_map.shape[1]:
        raise ValueError(f"k must be in [1, {change_map.shape[1]}], got {k}")
    order = torch.sort(change_map.detach(), dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=1).values.to(torch.int64)


def evenly_spaced_indices(
    batch_size: int, n: int, k: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``k`` of ``n`` tokens spread evenly (the centre of each of ``k`` equal runs), the same per sample.

    ``(2i + 1) * n // (2k)`` for ``i < k``: distinct because the runs are at least one token long.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    row = (2 * torch.arange(k, dtype=torch.int64, device=device) + 1) * n // (2 * k)
    return row.unsqueeze(0).repeat(batch_size, 1)


def top_k_mask(
    change_map: torch.Tensor | None, ratio: float, num_tokens: int, batch_size: int
) -> torch.Tensor:
    """Algorithm 1, line 23, at ``ratio``: the top-k tokens of ``change_map``, ``(B, k)`` int64 sorted.

    Without a change map (a switch policy went hybrid before any change was known) there is nothing to rank:
    the mask falls back to ``k`` evenly spaced tokens (:func:`evenly_spaced_indices`, on the CPU), which
    covers the image uniformly instead of favouring one corner.
    """
    k = mask_size(ratio, num_tokens)
    if change_map is None:
        return evenly_spaced_indices(batch_size, num_tokens, k)
    if tuple(change_map.shape) != (batch_size, num_tokens):
        raise ValueError(
            f"change map has shape {tuple(change_map.shape)}, "
            f"expected (batch, tokens) = {(batch_size, num_tokens)}"
        )
    return top_k_indices(change_map, k)
