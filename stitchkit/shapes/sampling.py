"""A plain flow-match Euler sampler for one model of the shapes pair, for checking quality.

The whole loop fits on a screen, as in minRF/DiT: the scheduler only supplies the sigma schedule, the
Euler step ``x ← x + (σ_next − σ)·v`` and classifier-free guidance are written where they happen. It is the
large-alone and small-alone reference that stitched methods are compared against, not the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from stitchkit.errors import ConfigError
from stitchkit.shapes.pair import DEFAULT_GUIDANCE, DEFAULT_STEPS, ShapesPair, encode_prompts


def initial_noise(pair: ShapesPair, batch_size: int, seed: int) -> torch.Tensor:
    """The starting noise ``(B, 3, H, W)`` of seed ``seed``, drawn on the CPU so every device agrees."""
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (batch_size, 3, pair.resolution, pair.resolution)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def sigmas_for(pair: ShapesPair, steps: int) -> torch.Tensor:
    """The scheduler's ``steps + 1`` sigmas, from 1 down to 0 (its shift applied)."""
    pair.scheduler.set_timesteps(steps)
    return pair.scheduler.sigmas.detach().to("cpu", torch.float32)


@torch.no_grad()
def sample(pair: ShapesPair, which: Literal["large", "small"], prompts: Sequence[str], seed: int, *,
           steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """Pictures ``(B, 3, H, W)`` in ``[-1, 1]`` drawn by the ``which`` model alone, ``steps`` Euler steps,
    guidance ``guidance`` against the empty prompt (1.0 switches it off). Starts from ``noise`` if given,
    else from :func:`initial_noise` of ``seed``."""
    if which not in ("large", "small"):
        raise ConfigError("which", f"unknown model {which!r}", "one of large, small")
    model = pair.large if which == "large" else pair.small
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = len(prompts)
    x = (noise if noise is not None else initial_noise(pair, batch, seed)).to(device, torch.float32)
    cfg = guidance != 1.0
    embeds, pooled = encode_prompts(pair, list(prompts))
    if cfg:  # [uncond, cond], as StableDiffusion3Pipeline orders them
        neg_embeds, neg_pooled = encode_prompts(pair, [""] * batch)
        embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
    embeds, pooled = embeds.to(dtype), pooled.to(dtype)
    sigmas = sigmas_for(pair, steps)
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x_in = torch.cat([x, x]) if cfg else x
        t = torch.full((x_in.shape[0],), sigma * 1000.0, device=device, dtype=dtype)
        v = model(hidden_states=x_in.to(dtype), timestep=t, encoder_hidden_states=embeds,
                  pooled_projections=pooled, return_dict=False)[0].float()
        if cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x = x + (sigma_next - sigma) * v
    return x.clamp(-1.0, 1.0)
