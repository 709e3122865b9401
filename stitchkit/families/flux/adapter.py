"""The pair adapter for FLUX.1 (``FluxPipeline``): FLUX.1-dev and a same-architecture smaller transformer
(Flux.1 Lite 8B, FLUX.1-schnell) share the CLIP + T5 encoders, the 16-channel VAE and the 2×2 packing,
so they stitch.

Every step is borrowed from the large ``FluxPipeline`` itself (``check_inputs``, ``encode_prompt``,
``prepare_latents``, the ``calculate_shift``/``retrieve_timesteps`` schedule, the VAE's scaling and shift
and the image processor), in the order its ``__call__`` runs them, so that ``switch="large"`` is that
pipeline, step for step. Latents are held unpacked, ``(B, 16, H/8, W/8)`` (:mod:`.latents` says why).

Guidance, both of FLUX's kinds (``pipeline_flux.py:768-851``):

* ``guidance_scale``: FLUX.1-dev is guidance-distilled: the scale is an input of the transformer (one pass
  per step), carried as :attr:`Conditioning.guidance`; a transformer without ``guidance_embeds``
  (schnell) ignores it, as ``FluxPipeline`` does;
* ``true_cfg_scale`` with a negative prompt: classifier-free guidance, two passes. stitchkit's loop runs
  the two as one batch [negative, positive] and combines them with ``FluxPipeline``'s formula
  (``neg + s · (pos - neg)``); ``FluxPipeline`` runs them as two calls, which agree up to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from stitchkit.errors import ConfigError
from stitchkit.families.checks import check_matching_config, check_same_placement
from stitchkit.families.family import Conditioning
from stitchkit.families.pipeline_adapter import DiffusersAdapter
from stitchkit.families.flux.latents import PACK, pack, unpack

#: Transformer config fields the two models of a pair must agree on to share latents, text and a loop.
MATCHING_FIELDS = ("in_channels", "out_channels", "patch_size", "joint_attention_dim", "pooled_projection_dim",
                   "guidance_embeds")
#: Call arguments of other families that this one has no use for: a value for one is refused, not ignored.
_UNSUPPORTED = ("prompt_3", "negative_prompt_3", "clip_skip")


def check_pair(large_transformer, small_transformer) -> None:
    """Refuse a pair whose transformers cannot share latents, text embeddings and guidance, naming the field."""
    check_matching_config(large_transformer, small_transformer, MATCHING_FIELDS)
    check_same_placement(large_transformer, small_transformer)


class FluxAdapter(DiffusersAdapter):
    """Everything family-specific about running a ``FluxPipeline`` with a second transformer."""

    scheduler_hint = "use FlowMatchEulerDiscreteScheduler, as FLUX.1's checkpoints do"
    family = "flux"

    @property
    def patch_size(self) -> int:
        """FLUX's tokens are 2×2 latent patches (packed; the transformer's own ``patch_size`` is 1)."""
        return PACK

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    def default_size(self) -> int:
        """FluxPipeline's default: ``default_sample_size`` (128) latents, 1024 px."""
        return int(self.pipeline.default_sample_size * self.pipeline.vae_scale_factor)

    def num_tokens(self, *, height: int, width: int, num_frames: int | None = None) -> int:
        p = self.vae_scale_factor * PACK
        return (height // p) * (width // p)

    def check_inputs(self, *, prompt=None, prompt_2=None, height: int, width: int, negative_prompt=None,
                     negative_prompt_2=None, prompt_embeds=None, negative_prompt_embeds=None,
                     pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, max_sequence_length=None,
                     **others: Any) -> None:
        for name in _UNSUPPORTED:
            if others.get(name) is not None:
                raise ConfigError(name, "is not used by FLUX pipelines", "leave it unset")
        multiple = self.vae_scale_factor * PACK
        for name, value in (("height", height), ("width", width)):
            if value % multiple:
                # FluxPipeline warns and rounds the size down; a stitched run refuses instead, so a result
                # table never reports a size that was not generated.
                raise ConfigError(name, f"{value} is not a multiple of {multiple}", f"use a multiple of {multiple}")
        self.pipeline.check_inputs(
            prompt, prompt_2, height, width, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            max_sequence_length=max_sequence_length,
        )

    def encode(self, *, guidance_scale: float, num_images_per_prompt: int, max_sequence_length: int,
               prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None, prompt_embeds=None,
               negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
               true_cfg_scale: float = 1.0, lora_scale: float | None = None, **unused: Any) -> Conditioning:
        """CLIP's pooled and T5's per-token embeddings, ``FluxPipeline.encode_prompt``'s; with true CFG (a
        negative prompt and ``true_cfg_scale > 1``, ``pipeline_flux.py:768-771``) the negative ones in
        front; the distilled guidance per row when the transformer embeds it."""
        has_negative = negative_prompt is not None or (
            negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None)
        true_cfg = true_cfg_scale > 1 and has_negative
        common = dict(device=self.device, num_images_per_prompt=num_images_per_prompt,
                      max_sequence_length=max_sequence_length, lora_scale=lora_scale)
        embeds, pooled, _ = self.pipeline.encode_prompt(prompt=prompt, prompt_2=prompt_2, prompt_embeds=prompt_embeds,
                                                        pooled_prompt_embeds=pooled_prompt_embeds, **common)
        if true_cfg:
            neg_embeds, neg_pooled, _ = self.pipeline.encode_prompt(
                prompt=negative_prompt, prompt_2=negative_prompt_2, prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=negative_pooled_prompt_embeds, **common)
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        guidance = None
        if self.pipeline.transformer.config.guidance_embeds:  # float32, as FluxPipeline makes it
            guidance = torch.full((embeds.shape[0],), float(guidance_scale), device=self.device, dtype=torch.float32)
        return Conditioning(prompt_embeds=embeds, pooled_projections=pooled,
                            guidance_scale=float(true_cfg_scale) if true_cfg else 1.0, guidance=guidance)

    def prepare_latents(self, *, batch_size: int, height: int, width: int, num_frames: int | None = None, dtype,
                        generator, latents):
        """FluxPipeline's latents (drawn ``(B, 16, H/8, W/8)``, then packed), unpacked; ``latents`` may be
        given packed, as FluxPipeline takes them, or unpacked."""
        if num_frames is not None:
            raise ConfigError("num_frames", "this family makes images, not videos", "leave it unset")
        channels = self.pipeline.transformer.config.in_channels // (PACK * PACK)
        if latents is not None and latents.ndim == 4:
            return latents.to(device=self.device, dtype=dtype)
        packed, _ = self.pipeline.prepare_latents(batch_size, channels, height, width, dtype, self.device,
                                                  generator, latents)
        return unpack(packed, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def timesteps(self, scheduler, *, num_inference_steps: int, latents: torch.Tensor, sigmas=None,
                  mu: float | None = None):
        """FluxPipeline's schedule (``pipeline_flux.py:822-842``): linear sigmas from 1 to 1/steps, shifted by
        ``mu`` from the packed sequence length; ``mu`` given here replaces that."""
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        if mu is None:
            h, w = latents.shape[-2:]
            mu = calculate_shift((h // PACK) * (w // PACK), scheduler.config.get("base_image_seq_len", 256),
                                 scheduler.config.get("max_image_seq_len", 4096),
                                 scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, self.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)  # as FluxPipeline does
        return timesteps

    def decode(self, latents: torch.Tensor, output_type: str):
        """Images as ``FluxPipeline`` returns them; ``output_type="latent"`` gives its packed latents
        ``(B, N, 64)``, as there."""
        if output_type == "latent":
            return pack(latents)
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(image, output_type=output_type)
