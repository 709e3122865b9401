"""The pair adapter for stitchkit's shipped ``shapes`` pair: two ``SD3Transformer2DModel``s in pixel space
(3 channels, no VAE) sharing one tiny CLIP text encoder.

It offers the engine what every family adapter does (:class:`stitchkit.families.Adapter`); its transformers
are SD3's, so the pair runs through SD3's masked forward and K/V cache: a new family is one adapter, never
an engine change.
"""

from __future__ import annotations

from typing import Any

import torch

from stitchkit.errors import ConfigError
from stitchkit.families.family import Conditioning

#: SD3-only call arguments this family has no use for; a value for one is refused, not ignored.
_UNSUPPORTED = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "clip_skip")


class ShapesAdapter:
    """Encode with the shared text encoder, start from pixel noise, decode by rescaling [-1, 1] pixels."""

    family = "shapes"
    vae_scale_factor = 1  # pixel space: one latent pixel per image pixel

    def __init__(self, pair) -> None:
        from diffusers.image_processor import VaeImageProcessor

        self.pair = pair
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    @property
    def large_transformer(self):
        return self.pair.large

    @property
    def patch_size(self) -> int:
        return int(self.pair.patch_size)

    @property
    def device(self) -> torch.device:
        return self.pair.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pair.large.dtype

    def default_size(self) -> int:
        return int(self.pair.resolution)

    def num_tokens(self, *, height: int, width: int, num_frames: int | None = None) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def to(self, device) -> None:
        self.pair.to(device)

    def components(self) -> dict[str, Any]:
        """The pair's parts under diffusers' component names (the large model is ``transformer``), which a
        ``StitchPipeline`` registers: the pair is not a diffusers pipeline."""
        pair = self.pair
        return {"transformer": pair.large, "text_encoder": pair.text_encoder, "tokenizer": pair.tokenizer,
                "scheduler": pair.scheduler}

    def new_scheduler(self):
        scheduler = self.pair.scheduler
        return type(scheduler).from_config(scheduler.config)

    def check_inputs(self, *, prompt=None, height: int, width: int, prompt_embeds=None,
                     pooled_prompt_embeds=None, **kwargs: Any) -> None:
        for name in _UNSUPPORTED:
            if kwargs.get(name) is not None:
                raise ConfigError(name, "is not used by the shapes pair", "leave it unset")
        for name, value in (("height", height), ("width", width)):
            if value % self.patch_size:
                raise ConfigError(name, f"{value} is not a multiple of the patch size {self.patch_size}",
                                  f"the pair was trained at {self.pair.resolution}")
        if prompt is None and (prompt_embeds is None or pooled_prompt_embeds is None):
            raise ConfigError("prompt", "missing", "give prompts, or prompt_embeds with pooled_prompt_embeds")

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from stitchkit.shapes.pair import encode_prompts

        return encode_prompts(self.pair, prompts)

    def encode(self, *, guidance_scale: float, num_images_per_prompt: int, max_sequence_length: int,
               prompt=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
               pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, **unused: Any) -> Conditioning:
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, pooled_prompt_embeds = self._encode(prompts)
        batch = prompt_embeds.shape[0]
        embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        pooled = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if guidance_scale > 1.0:
            if negative_prompt_embeds is None:
                negatives = negative_prompt or ""
                negatives = [negatives] * batch if isinstance(negatives, str) else list(negatives)
                negative_prompt_embeds, negative_pooled_prompt_embeds = self._encode(negatives)
            embeds = torch.cat([negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0), embeds])
            pooled = torch.cat([negative_pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0),
                                pooled])
        return Conditioning(prompt_embeds=embeds, pooled_projections=pooled, guidance_scale=guidance_scale)

    def prepare_latents(self, *, batch_size: int, height: int, width: int, num_frames: int | None = None, dtype,
                        generator, latents):
        if num_frames is not None:
            raise ConfigError("num_frames", "the shapes pair makes images, not videos", "leave it unset")
        from diffusers.utils.torch_utils import randn_tensor

        if latents is not None:
            return latents.to(device=self.device, dtype=dtype)
        shape = (batch_size, int(self.pair.large.config.in_channels), height, width)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)

    def timesteps(self, scheduler, *, num_inference_steps: int, latents: torch.Tensor, sigmas=None,
                  mu: float | None = None):
        if sigmas is not None:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        else:
            scheduler.set_timesteps(num_inference_steps, device=self.device)
        return scheduler.timesteps

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        return self.image_processor.postprocess(latents.clamp(-1, 1), output_type=output_type)
