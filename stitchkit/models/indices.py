"""Token-index checks and flat row numbers shared by masked runners (family-neutral)."""

from __future__ import annotations

import torch


def check_indices(indices: torch.Tensor, batch: int, n: int) -> None:
    """``indices`` must be int64 ``(batch, m)``, ``m >= 1``, distinct token numbers in ``[0, n)`` per row."""
    if indices.dtype != torch.int64 or indices.ndim != 2 or indices.shape[0] != batch or indices.shape[1] == 0:
        raise ValueError(
            f"indices must be int64 of shape (B={batch}, m) with m >= 1, got {indices.dtype} {tuple(indices.shape)}"
        )
    ordered = indices.sort(dim=1).values
    bad = (ordered[:, 0] < 0) | (ordered[:, -1] >= n) | (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
    if bool(bad.any()):
        raise ValueError(f"indices must be distinct token numbers in [0, {n}) in every row")


def check_rows(rows: torch.Tensor, batch: int, cache_rows: int | None = None) -> None:
    """``rows`` (the cache rows a call's batch rows are): int64 ``(batch,)``, distinct, in ``[0, cache_rows)``."""
    if rows.dtype != torch.int64 or rows.ndim != 1 or rows.shape[0] != batch:
        raise ValueError(f"rows must be int64 of shape ({batch},), got {rows.dtype} {tuple(rows.shape)}")
    if rows.unique().numel() != batch or bool((rows < 0).any()):
        raise ValueError("rows must be distinct, non-negative cache row numbers")
    if cache_rows is not None and bool((rows >= cache_rows).any()):
        raise ValueError(f"rows must be below the cache's {cache_rows} rows, got {rows.tolist()}")


def flat_rows(indices: torch.Tensor, length: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The rows of tokens ``indices`` (``(B, m)``) in a ``(R * length, ...)`` view of a ``(R, length, ...)``
    buffer, batch row ``b`` being buffer row ``rows[b]`` (``b`` itself without ``rows``)."""
    if rows is None:
        rows = torch.arange(indices.shape[0], device=indices.device)
    return (indices + rows[:, None] * length).reshape(-1)
