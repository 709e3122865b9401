"""Latents <-> image tokens, in the order SD3's transformer uses, and the stitch of Algorithm 1, line 12.

A latent ``(B, C, H, W)`` with patch size ``p`` has ``N = (H / p) * (W / p)`` tokens, row-major over the
``(H / p, W / p)`` grid; each token holds its ``p x p x C`` patch laid out ``(p, p, C)``, exactly what
``SD3Transformer2DModel``'s ``proj_out`` emits before its unpatchify (reshape to ``(B, h, w, p, p, C)``,
then ``einsum("nhwpqc->nchpwq")``). So a large model's masked prediction ``(B, m, p*p*C)`` can be put
straight into a small model's full prediction.
"""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` latents -> ``(B, N, p*p*C)`` tokens, the inverse of SD3's unpatchify."""
    b, c, height, width = x.shape
    if height % p or width % p:
        raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {p}")
    h, w = height // p, width // p
    return x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """``(B, h*w, p*p*C)`` tokens -> ``(B, C, h*p, w*p)`` latents, as SD3's transformer does."""
    b, n, d = tokens.shape
    if n != h * w or d % (p * p):
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit a {h}x{w} grid with patch size {p}")
    c = d // (p * p)
    return tokens.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, w * p)


def gather_tokens(x: torch.Tensor, indices: torch.Tensor, p: int) -> torch.Tensor:
    """The tokens ``indices`` (``(B, m)``) of latents ``x``: ``(B, m, p*p*C)``."""
    tokens = patchify(x, p)
    return torch.gather(tokens, 1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def stitch(full_pred: torch.Tensor, tokens: torch.Tensor, indices: torch.Tensor, p: int) -> torch.Tensor:
    """``full_pred`` (``(B, C, H, W)``, the small model's) with the tokens ``indices`` (``(B, m)``) replaced by
    ``tokens`` (``(B, m, p*p*C)``, the large model's): Algorithm 1, line 12, ``noise[Mask] <- noise_large``.

    Returns a new tensor; ``full_pred`` is left as it was.
    """
    b, c, height, width = full_pred.shape
    if indices.ndim != 2 or indices.shape[0] != b or tokens.shape != (b, indices.shape[1], p * p * c):
        raise ValueError(
            f"stitch: tokens {tuple(tokens.shape)} and indices {tuple(indices.shape)} do not match a prediction "
            f"of shape {tuple(full_pred.shape)} with patch size {p}; expected (B, m, {p * p * c}) and (B, m)"
        )
    if tokens.dtype != full_pred.dtype:
        raise ValueError(f"stitch: tokens are {tokens.dtype} but the prediction is {full_pred.dtype}")
    # Out of place: patchify may return a view of full_pred (p == 1, C == 1), which must not change.
    merged = patchify(full_pred, p).scatter(1, indices[..., None].expand(-1, -1, tokens.shape[-1]), tokens)
    return unpatchify(merged, p, height // p, width // p)
