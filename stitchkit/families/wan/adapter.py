"""The pair adapter for Wan 2.1 text-to-video (``WanPipeline``): the 14B and 1.3B transformers share one
VAE, one umT5 text encoder and one patchify (1×2×2 over frame, row, column), so they stitch.

Every step is borrowed from the large ``WanPipeline`` itself (``check_inputs``, ``encode_prompt``,
``prepare_latents``, the scheduler's ``set_timesteps``, the VAE's latent normalisation and the video
processor), in the order its ``__call__`` runs them, so that ``switch="large"`` is that pipeline, step for
step. Latents stay float32 as there; the transformer sees them in its own dtype (``wan_forward``).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch

from stitchkit.errors import ConfigError
from stitchkit.families.checks import check_matching_config
from stitchkit.families.family import Conditioning
from stitchkit.families.pipeline_adapter import DiffusersAdapter

#: Transformer config fields the two models of a pair must agree on to share latents, text and a loop.
MATCHING_FIELDS = ("in_channels", "out_channels", "patch_size", "text_dim", "image_dim", "added_kv_proj_dim")
#: Call arguments of other families that this one has no use for: a value for one is refused, not ignored.
_UNSUPPORTED = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds", "clip_skip")
#: WanPipeline's default frame count (81 frames: 21 latent frames).
DEFAULT_FRAMES = 81


def check_pair(large_transformer, small_transformer) -> None:
    """Refuse a pair whose transformers cannot share latents and text embeddings, naming the field."""
    check_matching_config(large_transformer, small_transformer, MATCHING_FIELDS)


class WanAdapter(DiffusersAdapter):
    """Everything family-specific about running a ``WanPipeline`` with a second transformer."""

    scheduler_hint = "use UniPCMultistepScheduler(use_flow_sigmas=True) or FlowMatchEulerDiscreteScheduler"
    family = "wan"

    def __init__(self, pipeline) -> None:
        if pipeline.transformer is None or getattr(pipeline, "transformer_2", None) is not None:
            raise ConfigError("large", "is a two-transformer (Wan 2.2) or transformer-less WanPipeline",
                              "pass a Wan 2.1 pipeline with one transformer")
        if pipeline.config.get("expand_timesteps"):
            raise ConfigError("large", "uses per-token timesteps (Wan 2.2 TI2V)", "pass a Wan 2.1 pipeline")
        super().__init__(pipeline)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.pipeline.transformer.config.patch_size)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipeline.vae_scale_factor_spatial)

    def default_size(self) -> tuple[int, int]:
        """WanPipeline's defaults: 480 × 832 (480p)."""
        return 480, 832

    @property
    def temporal_scale_factor(self) -> int:
        """Video frames per latent frame after the first (4 for Wan 2.1's VAE)."""
        return int(self.pipeline.vae_scale_factor_temporal)

    def check_num_frames(self, num_frames: int | None, path: str = "num_frames") -> int:
        """The frames a call generates: ``num_frames`` (81 when unset), which must be 1 + a multiple of the
        VAE's temporal factor (the causal VAE keeps the first frame alone)."""
        frames = DEFAULT_FRAMES if num_frames is None else num_frames
        temporal = self.temporal_scale_factor
        if isinstance(frames, bool) or not isinstance(frames, Integral) or frames < 1 or frames % temporal != 1:
            raise ConfigError(path, f"{frames!r} is not 1 more than a multiple of {temporal} (the VAE's temporal "
                              "factor)", f"use {temporal}k + 1 frames, e.g. {DEFAULT_FRAMES}")
        return int(frames)

    def latent_frames(self, num_frames: int | None) -> int:
        return (self.check_num_frames(num_frames) - 1) // self.temporal_scale_factor + 1

    def num_tokens(self, *, height: int, width: int, num_frames: int | None = None) -> int:
        p_t, p_h, p_w = self.patch_size
        s = self.vae_scale_factor
        return (self.latent_frames(num_frames) // p_t) * (height // s // p_h) * (width // s // p_w)

    def check_inputs(self, *, prompt=None, negative_prompt=None, height: int, width: int, prompt_embeds=None,
                     negative_prompt_embeds=None, **others: Any) -> None:
        for name in _UNSUPPORTED:
            if others.get(name) is not None:
                raise ConfigError(name, "is not used by Wan pipelines", "leave it unset")
        p_h, p_w = self.patch_size[1:]
        for name, value, multiple in (("height", height, self.vae_scale_factor * p_h),
                                      ("width", width, self.vae_scale_factor * p_w)):
            if value % multiple:
                # WanPipeline silently rounds the size down; a stitched run refuses instead, so a result
                # table never reports a size that was not generated.
                raise ConfigError(name, f"{value} is not a multiple of {multiple}", f"use a multiple of {multiple}")
        self.pipeline.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds)

    def encode(self, *, guidance_scale: float, num_images_per_prompt: int, max_sequence_length: int,
               prompt=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
               **unused: Any) -> Conditioning:
        guided = guidance_scale > 1.0
        embeds, neg_embeds = self.pipeline.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guided,
            num_videos_per_prompt=num_images_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length,
            device=self.device,
        )
        embeds = embeds.to(self.dtype)
        if guided:
            embeds = torch.cat([neg_embeds.to(self.dtype), embeds], dim=0)
        return Conditioning(prompt_embeds=embeds, pooled_projections=None, guidance_scale=guidance_scale)

    def prepare_latents(self, *, batch_size: int, height: int, width: int, num_frames: int | None = None, dtype,
                        generator, latents):
        """WanPipeline's latents: float32, ``(B, C, (frames - 1) / 4 + 1, H / 8, W / 8)``."""
        frames = self.check_num_frames(num_frames)
        channels = self.pipeline.transformer.config.in_channels
        return self.pipeline.prepare_latents(batch_size, channels, height, width, frames, torch.float32,
                                             self.device, generator, latents)

    def timesteps(self, scheduler, *, num_inference_steps: int, latents: torch.Tensor, sigmas=None,
                  mu: float | None = None):
        if sigmas is not None or mu is not None:
            raise ConfigError("sigmas" if sigmas is not None else "mu", "is not used by Wan pipelines",
                              "leave it unset; the scheduler's flow_shift sets the schedule")
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)  # as WanPipeline does
        return scheduler.timesteps

    def decode(self, latents: torch.Tensor, output_type: str):
        """Frames as ``WanPipeline`` returns them (``output_type`` "np": ``(B, F, H, W, 3)`` in [0, 1]; "pil":
        a list of frame lists)."""
        if output_type == "latent":
            return latents
        vae = self.pipeline.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipeline.video_processor.postprocess_video(video, output_type=output_type)
