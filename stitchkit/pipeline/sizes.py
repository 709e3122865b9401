"""The image sides a pair can make, checked before a generation instead of failing inside diffusers.

A side must be a multiple of the VAE factor times the patch size (SD3's ``check_inputs`` raises a bare
``ValueError`` for 33; the shapes pair, pixel space with 2-pixel patches, refused it as ``height``), and no
larger than what both transformers' cropped position embeddings cover: ``pos_embed_max_size × patch × VAE
factor`` (diffusers' ``PatchEmbed.cropped_pos_embed`` raises "Height (32) cannot be greater than
`pos_embed_max_size`" from inside the forward; the shapes pair at ``height: 64`` ended there, issue 25). The
small model is checked too: a small model with a smaller ``pos_embed_max_size`` used to fail at its first
step. Families without a position-embedding limit (RoPE: Wan, FLUX) have no upper bound here.

``prefix`` puts the caller's field in front of the path: ``height`` from the Python API, ``sampler.height``
from an experiment.
"""

from __future__ import annotations

from typing import Any

from stitchkit.errors import ConfigError
from stitchkit.sampler import largest_size

__all__ = ["check_sides"]


def _patches(adapter: Any) -> tuple[int, int]:
    """The patch size along height and width (a video family's is per axis: frames, rows, columns)."""
    patch = adapter.patch_size
    if isinstance(patch, (tuple, list)):
        return int(patch[-2]), int(patch[-1])
    return int(patch), int(patch)


def check_sides(adapter: Any, small: Any, height: int, width: int, prefix: str = "",
                multiples: bool = True) -> None:
    """Refuse a side the pair cannot make, naming the field and the sides it can (``multiples=False``: only
    the position embeddings' bound, for a caller that words the multiple itself, as ``stitchkit profile``)."""
    factor = int(adapter.vae_scale_factor)
    limits = []
    for role, model in (("large", adapter.large_transformer), ("small", small)):
        config = getattr(model, "config", None)
        if config is not None and not isinstance(adapter.patch_size, (tuple, list)):
            limit = largest_size(config, int(adapter.patch_size), factor)
            if limit is not None:
                limits.append((limit, role))
    for name, side, patch in (("height", height, _patches(adapter)[0]), ("width", width, _patches(adapter)[1])):
        multiple = factor * patch
        if multiples and side % multiple:
            raise ConfigError(f"{prefix}{name}", f"{side} is not a multiple of {multiple} (VAE factor {factor} × "
                              f"patch {patch})", f"use a multiple of {multiple}")
        for limit, role in sorted(limits):
            if side > limit:
                raise ConfigError(f"{prefix}{name}", f"{side} is beyond the {limit} the {role} model's position "
                                  "embedding covers (pos_embed_max_size × patch × VAE factor)",
                                  f"use at most {limit}")
