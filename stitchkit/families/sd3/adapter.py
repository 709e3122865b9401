"""The pair adapter for the Stable Diffusion 3 family (SD3 Medium, SD3.5 Large/Medium) in diffusers.

An adapter knows how a model family encodes prompts, prepares latents, maps latents to image tokens and
decodes; the engine never names a family. This one borrows every step from the large
``StableDiffusion3Pipeline`` itself (``encode_prompt``, ``prepare_latents``, ``retrieve_timesteps``, the VAE
and image processor), so that ``switch="large"`` is that pipeline, step for step.
"""

from __future__ import annotations

from typing import Any

import torch

from stitchkit.errors import ConfigError
from stitchkit.families.checks import check_matching_config, check_same_placement
from stitchkit.families.family import Conditioning
from stitchkit.families.pipeline_adapter import DiffusersAdapter

#: Transformer config fields the two models of a pair must agree on to share latents, text and a loop.
MATCHING_FIELDS = ("in_channels", "out_channels", "patch_size", "joint_attention_dim", "pooled_projection_dim")


def check_pair(large_transformer, small_transformer) -> None:
    """Refuse a pair whose transformers cannot share latents and text embeddings, naming the field."""
    check_matching_config(large_transformer, small_transformer, MATCHING_FIELDS)
    check_same_placement(large_transformer, small_transformer)


class SD3Adapter(DiffusersAdapter):
    """Everything family-specific about running a ``StableDiffusion3Pipeline`` with a second transformer."""

    family = "sd3"

    @property
    def patch_size(self) -> int:
        return int(self.pipeline.transformer.config.patch_size)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    def default_size(self) -> int:
        return int(self.pipeline.default_sample_size * self.pipeline.vae_scale_factor)

    def num_tokens(self, *, height: int, width: int, num_frames: int | None = None) -> int:
        p = self.vae_scale_factor * self.patch_size
        return (height // p) * (width // p)

    def check_inputs(self, **kwargs: Any) -> None:
        self.pipeline.check_inputs(**kwargs)

    def encode(self, *, guidance_scale: float, num_images_per_prompt: int, max_sequence_length: int,
               **prompts: Any) -> Conditioning:
        guided = guidance_scale > 1.0
        embeds, neg_embeds, pooled, neg_pooled = self.pipeline.encode_prompt(
            do_classifier_free_guidance=guided,
            device=self.device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            **prompts,
        )
        if guided:
            embeds = torch.cat([neg_embeds, embeds], dim=0)
            pooled = torch.cat([neg_pooled, pooled], dim=0)
        return Conditioning(prompt_embeds=embeds, pooled_projections=pooled, guidance_scale=guidance_scale)

    def prepare_latents(self, *, batch_size: int, height: int, width: int, num_frames: int | None = None, dtype,
                        generator, latents):
        if num_frames is not None:
            raise ConfigError("num_frames", "this family makes images, not videos", "leave it unset")
        channels = self.pipeline.transformer.config.in_channels
        return self.pipeline.prepare_latents(batch_size, channels, height, width, dtype, self.device, generator,
                                             latents)

    def timesteps(self, scheduler, *, num_inference_steps: int, latents: torch.Tensor, sigmas=None,
                  mu: float | None = None):
        """The pipeline's own timestep preparation, including the resolution-dependent shift when used."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None) and mu is None:
            h, w = latents.shape[-2:]
            seq_len = (h // self.patch_size) * (w // self.patch_size)
            mu = calculate_shift(seq_len, scheduler.config.get("base_image_seq_len", 256),
                                 scheduler.config.get("max_image_seq_len", 4096),
                                 scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.16))
        if mu is not None:
            kwargs["mu"] = mu
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, self.device, sigmas=sigmas, **kwargs)
        return timesteps

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(image, output_type=output_type)
