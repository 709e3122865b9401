"""Latents <-> tokens for a patchified transformer, and the stitch of Algorithm 1, line 12.

A latent ``(B, C, *S)`` (``S`` = ``(H, W)`` for an image, ``(F, H, W)`` for a video) with patch size
``p = (p_1, ..., p_k)`` (an int means the same size along every axis) has the token grid
``g = (S_1 / p_1, ..., S_k / p_k)`` and ``N = prod(g)`` tokens, row-major over ``g`` (for a video:
frame, then row, then column). Each token holds its patch laid out ``(p_1, ..., p_k, C)``, channels last:
what a patchified transformer's ``proj_out`` emits before its unpatchify (reshape to
``(B, *g, *p, C)``, then interleave grid and patch axes). Both built-in transformer families use this
layout, so a large model's masked prediction ``(B, m, prod(p)*C)`` can be put straight into a small model's
full prediction; a family with another layout would bring its own token functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

def patch_tuple(p: "int | Sequence[int]", ndim: int) -> tuple[int, ...]:
    """``p`` as one size per spatial axis (``ndim`` of them)."""
    if isinstance(p, int):
        return (int(p),) * ndim
    p = tuple(int(v) for v in p)
    if len(p) != ndim:
        raise ValueError(f"patch size {p} does not fit {ndim} spatial axes")
    return p


def token_grid(spatial: Sequence[int], p: "int | Sequence[int]") -> tuple[int, ...]:
    """The token grid of latents with spatial shape ``spatial`` (``(H, W)`` or ``(F, H, W)``)."""
    spatial = tuple(int(s) for s in spatial)
    patch = patch_tuple(p, len(spatial))
    if any(s % q for s, q in zip(spatial, patch)):
        size = "x".join(map(str, spatial))
        raise ValueError(f"latent size {size} is not divisible by the patch size {'x'.join(map(str, patch))}")
    return tuple(s // q for s, q in zip(spatial, patch))


def patchify(x: torch.Tensor, p: "int | Sequence[int]") -> torch.Tensor:
    """``(B, C, *S)`` latents -> ``(B, N, prod(p)*C)`` tokens, the inverse of the transformer's unpatchify."""
    b, c, *spatial = x.shape
    grid = token_grid(spatial, p)
    patch = patch_tuple(p, len(spatial))
    k = len(spatial)
    split = [b, c] + [v for pair in zip(grid, patch) for v in pair]  # (B, C, g1, p1, g2, p2, ...)
    order = [0] + [2 + 2 * i for i in range(k)] + [3 + 2 * i for i in range(k)] + [1]  # (B, *g, *p, C)
    return x.reshape(split).permute(order).reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: torch.Tensor, p: "int | Sequence[int]", *grid: int) -> torch.Tensor:
    """``(B, prod(grid), prod(p)*C)`` tokens -> ``(B, C, *(grid * p))`` latents, as the transformer does."""
    b, n, d = tokens.shape
    patch = patch_tuple(p, len(grid))
    volume = math.prod(patch)
    if n != math.prod(grid) or d % volume:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit a {'x'.join(map(str, grid))} grid "
                         f"with patch size {'x'.join(map(str, patch))}")
    c = d // volume
    k = len(grid)
    order = [0, 2 * k + 1] + [v for i in range(k) for v in (1 + i, 1 + k + i)]  # (B, C, g1, p1, g2, p2, ...)
    spatial = [g * q for g, q in zip(grid, patch)]
    return tokens.reshape(b, *grid, *patch, c).permute(order).reshape(b, c, *spatial)


def gather_tokens(x: torch.Tensor, indices: torch.Tensor, p: "int | Sequence[int]") -> torch.Tensor:
    """The tokens ``indices`` (``(B, m)``) of latents ``x``: ``(B, m, prod(p)*C)``."""
    tokens = patchify(x, p)
    return torch.gather(tokens, 1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def stitch(full_pred: torch.Tensor, tokens: torch.Tensor, indices: torch.Tensor,
           p: "int | Sequence[int]") -> torch.Tensor:
    """``full_pred`` (``(B, C, *S)``, the small model's) with the tokens ``indices`` (``(B, m)``) replaced by
    ``tokens`` (``(B, m, prod(p)*C)``, the large model's): Algorithm 1, line 12, ``noise[Mask] <- noise_large``.

    Returns a new tensor; ``full_pred`` is left as it was.
    """
    b, c, *spatial = full_pred.shape
    patch = patch_tuple(p, len(spatial))
    width = math.prod(patch) * c
    if indices.ndim != 2 or indices.shape[0] != b or tokens.shape != (b, indices.shape[1], width):
        raise ValueError(
            f"stitch: tokens {tuple(tokens.shape)} and indices {tuple(indices.shape)} do not match a prediction "
            f"of shape {tuple(full_pred.shape)} with patch size {p}; expected (B, m, {width}) and (B, m)"
        )
    if tokens.dtype != full_pred.dtype:
        raise ValueError(f"stitch: tokens are {tokens.dtype} but the prediction is {full_pred.dtype}")
    # Out of place: patchify may return a view of full_pred (p == 1, C == 1), which must not change.
    merged = patchify(full_pred, patch).scatter(1, indices[..., None].expand(-1, -1, tokens.shape[-1]), tokens)
    return unpatchify(merged, patch, *token_grid(spatial, patch))
