"""Skip-layer guidance (SD3.5's ``skip_guidance_layers``) on the steps where it is defined.

diffusers (``pipeline_stable_diffusion_3.py:1084-1109``, 0.42.1) adds, after classifier-free guidance and on
steps ``start·T < i < stop·T``, a third pass of the large transformer on the conditional half with
``skip_layers``: ``pred += (pred_text - pred_skip) · scale``. That pass and ``pred_text`` are the large model's
on every token, so the term is defined exactly on steps where every sample runs the large model in full; a
small-model, hybrid (masked, K/V-cached) or reuse step inside the window has no counterpart, and is refused
in one line rather than silently left without the term.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from stitchkit.errors import ConfigError
from stitchkit.protocols import Decision

__all__ = ["skip_layer_guidance"]

AfterGuidance = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Sequence[Decision]],
                         torch.Tensor]


def _full_large(decision: Decision) -> bool:
    return decision.large and not decision.small and decision.reuse is None


def skip_layer_guidance(*, transformer: torch.nn.Module, layers: Sequence[int] | None, scale: float, start: float,
                        stop: float, num_steps: int, guided: bool, prompt_embeds: torch.Tensor,
                        pooled_projections: torch.Tensor | None, switch: Any) -> AfterGuidance | None:
    """The engine's ``after_guidance`` hook for ``skip_guidance_layers=layers`` (``None``: no hook).

    ``prompt_embeds``/``pooled_projections`` hold [uncond, cond] halves; the skip pass sees the cond half, as
    in diffusers. Refused up front (one :class:`ConfigError`) for a transformer without ``skip_layers`` and for
    layers out of range; at a step inside the window that is not a full large step, refused naming the step."""
    if layers is None:
        return None
    if "skip_layers" not in inspect.signature(type(transformer).forward).parameters:
        raise ConfigError("skip_guidance_layers", f"{type(transformer).__name__} takes no skip_layers",
                          "leave it None: this family's transformer cannot skip layers")
    num_layers = len(getattr(transformer, "transformer_blocks", ()))
    bad = [layer for layer in layers if not (isinstance(layer, int) and 0 <= layer < num_layers)]
    if bad:
        raise ConfigError("skip_guidance_layers", f"{bad[0]!r} is not a layer of the large model",
                          f"give block indices in [0, {num_layers})")
    if not guided:  # diffusers applies it only under classifier-free guidance
        return None
    half = prompt_embeds.shape[0] // 2
    cond_embeds = prompt_embeds[half:]
    cond_pooled = None if pooled_projections is None else pooled_projections[half:]
    name = getattr(switch, "__name__", None) or type(switch).__name__

    def after_guidance(i: int, t: torch.Tensor, latents: torch.Tensor, raw: torch.Tensor, guided_pred: torch.Tensor,
                       decisions: Sequence[Decision]) -> torch.Tensor:
        if not (i > num_steps * start and i < num_steps * stop):
            return guided_pred
        if not all(_full_large(d) for d in decisions):
            raise ConfigError("skip_guidance_layers", f"step {i} of {name} is not a full large-model step",
                              "skip-layer guidance needs the large model on every token at steps "
                              f"{start}·T..{stop}·T: use switch='large' there, or leave it None")
        pred_text = raw.chunk(2)[1]
        pred_skip = transformer(hidden_states=latents, timestep=t.expand(latents.shape[0]),
                                encoder_hidden_states=cond_embeds, pooled_projections=cond_pooled,
                                return_dict=False, skip_layers=list(layers))[0]
        return guided_pred + (pred_text - pred_skip) * scale

    return after_guidance
