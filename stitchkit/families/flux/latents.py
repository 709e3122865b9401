"""FLUX's packed latents, position ids and token layout, against stitchkit's ``(B, C, H, W)`` latents.

``FluxPipeline`` keeps its latents packed: ``(B, C, H, W)`` -> ``(B, (H/2)·(W/2), C·2·2)``, each token a
2×2 patch laid out ``(C, 2, 2)`` (``FluxPipeline._pack_latents``,
``diffusers/pipelines/flux/pipeline_flux.py:522-527``), and its transformer has ``patch_size=1`` on those
tokens. stitchkit's loop keeps latents ``(B, C, H, W)`` with patch size 2 and tokens laid out
``(2, 2, C)`` (:mod:`stitchkit.tokens`), so the stitch, the change map and the masks are the same
code for every family. Packing is a permutation and the scheduler's step is elementwise, so the loop's
latents are ``FluxPipeline``'s, unpacked, bit for bit. The family packs at the transformer's door
(:func:`flux_call_args`) and hands masked tokens back in stitchkit's layout (:func:`to_stitch_layout`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import FluxPipeline

if TYPE_CHECKING:
    from stitchkit.protocols import ModelInputs

#: FLUX packs 2×2 latent patches into one token (``FluxPipeline._pack_latents``).
PACK = 2


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/2)·(W/2), C·4)``, exactly ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, (H/2)·(W/2), C·4)`` -> ``(B, C, H, W)`` for latents ``height × width`` (the inverse of :func:`pack`;
    ``FluxPipeline._unpack_latents`` takes the size in pixels instead)."""
    b, n, d = tokens.shape
    tokens = tokens.view(b, height // PACK, width // PACK, d // (PACK * PACK), PACK, PACK)
    return tokens.permute(0, 3, 1, 4, 2, 5).reshape(b, d // (PACK * PACK), height, width)


def to_stitch_layout(tokens: torch.Tensor) -> torch.Tensor:
    """Packed tokens ``(B, m, C·2·2)`` laid out ``(C, 2, 2)`` -> the same tokens laid out ``(2, 2, C)``, as
    :func:`stitchkit.tokens.patchify` lays out a ``(B, C, H, W)`` prediction."""
    return tokens.unflatten(-1, (-1, PACK, PACK)).permute(0, 1, 3, 4, 2).flatten(2)


def flux_call_args(model, inputs: "ModelInputs") -> dict:
    """The keyword arguments ``FluxPipeline.__call__`` hands ``FluxTransformer2DModel`` for ``inputs``
    (``pipeline_flux.py:898-911``): packed latents, ``timestep / 1000`` in the latents' dtype, the distilled
    guidance (only for a model with ``guidance_embeds``), pooled CLIP and T5 embeddings, and the text and
    image position ids (``txt_ids`` zeros, ``img_ids`` (0, row, column) of each packed token)."""
    x = inputs.hidden_states.to(model.dtype)
    _, _, h, w = x.shape
    text = inputs.encoder_hidden_states
    return dict(
        hidden_states=pack(x),
        timestep=inputs.timestep.to(x.dtype) / 1000,
        guidance=inputs.guidance if model.config.guidance_embeds else None,
        pooled_projections=inputs.pooled_projections,
        encoder_hidden_states=text,
        txt_ids=torch.zeros(text.shape[1], 3, device=text.device, dtype=text.dtype),
        img_ids=FluxPipeline._prepare_latent_image_ids(x.shape[0], h // PACK, w // PACK, x.device, x.dtype),
    )
