"""``StitchPipeline``: a diffusers-style pipeline that stitches a large and a small transformer.

    >>> from stitchkit import StitchPipeline
    >>> pipe = StitchPipeline.from_pretrained("stabilityai/stable-diffusion-3.5-large",
    ...                                       "stabilityai/stable-diffusion-3-medium-diffusers",
    ...                                       torch_dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    >>> out = pipe("a bird on a branch", switch="hybridstitch-30")                     # doctest: +SKIP
    >>> out.images[0], out.trace[-1].stage                                               # doctest: +SKIP

The model family (how prompts are encoded, latents made and decoded, and the large transformer masked) is
looked up in the plugin registry from the large pipeline's class (:mod:`stitchkit.families`); this file
names none. Text encoders, VAE and scheduler come from the large pipeline; the small model contributes only
its transformer. The caller's pipelines are never changed: the scheduler is copied, attention processors are
installed for one generation and restored after it (also on error).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import torch

from stitchkit.engine import Models, Policies, StepCallback, denoise
from stitchkit.errors import ConfigError
from stitchkit.registry import Registry, get_registry
from stitchkit.trace import BatchStep, StepRecord

#: What ``mask=`` and ``context=`` default to when neither the call nor a preset names them.
DEFAULT_MASK = "top-k"
DEFAULT_CONTEXT = "kv-cache"


@attrs.frozen(kw_only=True)
class StitchOutput:
    """``images`` as diffusers returns them for the ``output_type``; ``trace``: one record per step (for one
    sample its record; for a batch the summary of :func:`stitchkit.trace.batch_record`); ``traces``: one
    trace per sample (its own stage and tokens per step); ``steps``: per step, the batched model calls."""

    images: Any
    trace: tuple[StepRecord, ...]
    traces: tuple[tuple[StepRecord, ...], ...] = ()
    steps: tuple[BatchStep, ...] = ()


class StitchPipeline:
    """Runs one denoising loop over a pair of transformers, policies deciding who computes what."""

    def __init__(self, adapter, small_transformer: torch.nn.Module, registry: Registry | None = None,
                 pair_id: str | None = None, family=None) -> None:
        """``adapter``: a family's pipeline adapter (:class:`stitchkit.families.Adapter`); ``family``: its
        :class:`~stitchkit.families.Family`, else the one registered under ``adapter.family``."""
        self.registry = registry or get_registry()
        self.family = family or self.registry.families[adapter.family]
        self.family.check_pair(adapter.large_transformer, small_transformer)
        self.adapter = adapter
        self.small = small_transformer
        self.masked_large = self.family.masked_runner(adapter.large_transformer)
        #: Names the pair in profiles and result tables.
        self.pair_id = pair_id or "+".join(
            str(m.config.get("_name_or_path") or f"{m.config.num_layers}x{m.config.num_attention_heads}")
            for m in (adapter.large_transformer, small_transformer))

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_pipelines(cls, *, large, small, registry: Registry | None = None,
                       pair_id: str | None = None) -> "StitchPipeline":
        """``large``: a pipeline of a registered model family; ``small``: a pipeline of the same family or
        its transformer. The family is the one whose ``accepts_pipeline`` takes ``large``."""
        registry = registry or get_registry()
        family = registry.family_for_pipeline(large)
        small_transformer = getattr(small, "transformer", small)
        if not isinstance(small_transformer, torch.nn.Module) or not hasattr(small_transformer, "config"):
            raise ConfigError("small", f"is a {type(small).__name__}",
                              f"pass a {type(large).__name__} or its transformer")
        return cls(family.adapter(large), small_transformer, registry=registry, pair_id=pair_id, family=family)

    @classmethod
    def from_pretrained(cls, large: str, small: str, *, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, registry: Registry | None = None,
                        **kwargs: Any) -> "StitchPipeline":
        """Hub ids or local folders in diffusers format; only the small pipeline's transformer is loaded.

        The family is the one that claims the ``large`` folder or lists its pipeline class
        (``model_index.json``). Extra keyword arguments go to the large pipeline's ``from_pretrained``
        (``text_encoder_3=None`` to run SD3 without T5, say); the loading options among them
        (``local_files_only``, ``revision``, ``cache_dir``, ``token``, ``variant``, ``use_safetensors``) go to
        the small transformer's too.
        """
        from stitchkit.families.loading import loading_options

        registry = registry or get_registry()
        family = registry.family_for_checkpoint(large, **loading_options(kwargs))
        large_pipe, small_tf = family.load(large, small, torch_dtype=torch_dtype, device=device, **kwargs)
        pair_id = large if large == small else f"{large}+{small}"
        return cls.from_pipelines(large=large_pipe, small=small_tf, registry=registry, pair_id=pair_id)

    @classmethod
    def from_shapes(cls, path=None, *, torch_dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None, registry: Registry | None = None) -> "StitchPipeline":
        """The shipped CPU pair (``stitchkit/pairs/shapes``), or a shapes pair saved at ``path``."""
        if path is None:
            from stitchkit.pairs import load_pair_pipeline

            pipe = load_pair_pipeline("shapes", registry=registry)
            return pipe.to(device) if device is not None else pipe
        return cls.from_pretrained(str(path), str(path), torch_dtype=torch_dtype, device=device, registry=registry)

    # -- policies ---------------------------------------------------------------------------------------
    def resolve_policies(self, switch: Any = "large", mask: Any = None, context: Any = None) -> Policies:
        """Policy objects from names, ``{"kind": ..., **params}`` dicts or objects; a preset's implied
        mask/context apply where the call names none."""
        switch_policy, implied = self.registry.create("switch", switch)
        mask_policy, _ = self.registry.create("mask", mask if mask is not None else implied.get("mask", DEFAULT_MASK))
        context_policy, _ = self.registry.create(
            "context", context if context is not None else implied.get("context", DEFAULT_CONTEXT))
        return Policies(switch=switch_policy, mask=mask_policy, context=context_policy)

    # -- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
        mu: float | None = None,
        *,
        switch: Any = "large",
        mask: Any = None,
        context: Any = None,
        callback: StepCallback | None = None,
        progress: bool = False,
        allow_unprofitable: bool = False,
        num_frames: int | None = None,
        cache: Any = None,
    ) -> StitchOutput:
        """Generate as ``StableDiffusion3Pipeline.__call__`` does, with ``switch``/``mask``/``context``
        choosing the method (a name, a ``{"kind": name, **params}`` dict, or a policy object).

        A HybridStitch-like policy (one with ``mask_ratios``) is checked against Eq. 7-8 first and refused
        with a :class:`ConfigError` when its masks cannot pay off; ``allow_unprofitable=True`` (ablations)
        makes that a warning. ``num_frames``: for a video family, the frames to generate (its default if
        unset); an image family refuses it.

        ``cache``: diffusers' cache hooks for this generation (:mod:`stitchkit.caches`): a cache name,
        ``{"kind": "magcache", **params}`` or a cache object for the large model, or
        ``{"large": ..., "small": ...}``. MagCache without ``mag_ratios`` is calibrated on first use."""
        policies = self.resolve_policies(switch, mask, context)
        cache_specs = self.resolve_caches(cache)
        adapter = self.adapter
        default = adapter.default_size()
        default_height, default_width = default if isinstance(default, tuple) else (default, default)
        height, width = height or default_height, width or default_width
        adapter.check_inputs(
            prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, height=height, width=width,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, max_sequence_length=max_sequence_length,
        )
        if isinstance(prompt, str):
            batch = 1
        elif prompt is not None:
            batch = len(prompt)
        else:
            batch = prompt_embeds.shape[0]
        cond = adapter.encode(
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length, prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
        )
        self.check_plan(policies.switch, height=height, width=width, text_tokens=cond.prompt_embeds.shape[1],
                        guided=cond.guided, allow_unprofitable=allow_unprofitable, num_frames=num_frames)
        latents = adapter.prepare_latents(batch_size=batch * num_images_per_prompt, height=height, width=width,
                                          num_frames=num_frames, dtype=cond.prompt_embeds.dtype,
                                          generator=generator, latents=latents)
        scheduler = adapter.new_scheduler()
        timesteps = adapter.timesteps(scheduler, num_inference_steps=num_inference_steps, latents=latents,
                                      sigmas=sigmas, mu=mu)
        models = Models(large=adapter.large_transformer, masked_large=self.masked_large, small=self.small,
                        patch_size=adapter.patch_size, forward=self.family.forward)
        caches = self._model_caches(cache_specs, models=models, policies=policies, latents=latents,
                                    cond=cond, num_steps=len(timesteps), mu=mu, sigmas=sigmas,
                                    num_inference_steps=num_inference_steps)
        result = denoise(
            models=models, policies=policies, scheduler=scheduler, timesteps=timesteps, latents=latents,
            prompt_embeds=cond.prompt_embeds, pooled_projections=cond.pooled_projections,
            guidance_scale=cond.guidance_scale, callback=callback, progress=progress, caches=caches,
        )
        return StitchOutput(images=adapter.decode(result.latents, output_type), trace=result.trace,
                            traces=result.traces, steps=result.steps)

    def resolve_caches(self, cache: Any, path: str = "cache") -> dict[str, Any]:
        """``{role: cache object}`` from ``cache=`` (see :func:`stitchkit.caches.normalize_cache_spec`)."""
        from stitchkit.caches import normalize_cache_spec

        per_role = isinstance(cache, Mapping) and "kind" not in cache
        return {role: self.registry.create("cache", spec, path=f"{path}.{role}" if per_role else path)[0]
                for role, spec in normalize_cache_spec(cache, path).items()}

    def _model_caches(self, specs: Mapping[str, Any], *, models: Models, policies: Policies, latents, cond,
                      num_steps: int, **schedule: Any) -> dict[str, Any]:
        """One :class:`stitchkit.caches.ModelCache` per cached model; MagCache's ratios from the disk cache,
        or calibrated now: one generation of that model alone in diffusers' calibrate mode, same inputs."""
        from stitchkit.caches import ModelCache, load_ratios, magcache_key, save_ratios

        out = {}
        for role, spec in specs.items():
            model = models.large if role == "large" else models.small
            ratios = None
            if getattr(spec, "needs_calibration", False):
                key = magcache_key(pair_id=self.pair_id, role=role, model=model, num_steps=num_steps,
                                   num_tokens=math.prod(latents.shape[2:]), guided=cond.guided)
                ratios = load_ratios(key)
                if ratios is None:
                    probe = ModelCache(model=model, cache=spec, role=role, calibrating=True)
                    scheduler = self.adapter.new_scheduler()
                    timesteps = self.adapter.timesteps(scheduler, latents=latents, **schedule)
                    denoise(models=models, policies=self.resolve_policies(role), scheduler=scheduler,
                            timesteps=timesteps, latents=latents.clone(), prompt_embeds=cond.prompt_embeds,
                            pooled_projections=cond.pooled_projections, guidance_scale=cond.guidance_scale,
                            caches={role: probe})
                    ratios = tuple(probe.calibrated)
                    save_ratios(key, list(ratios), pair=self.pair_id, role=role, num_steps=num_steps)
            out[role] = ModelCache(model=model, cache=spec, role=role, mag_ratios=ratios)
        return out

    def costs(self, *, height: int, width: int, text_tokens: int, guided: bool, num_frames: int | None = None):
        """The pair's per-step costs at this size: its cached profile, else a FLOPs estimate (``.source``)."""
        from stitchkit.validation import pair_costs

        return pair_costs(
            pair_id=self.pair_id, large_config=self.adapter.large_transformer.config,
            small_config=self.small.config, height=height, width=width,
            num_tokens=self.adapter.num_tokens(height=height, width=width, num_frames=num_frames),
            text_tokens=text_tokens, batch=2 if guided else 1, dtype=str(self.adapter.dtype).removeprefix("torch."),
            device=self.adapter.device.type, flops=self.family.flops)

    def check_plan(self, switch: Any, *, height: int, width: int, text_tokens: int, guided: bool,
                   allow_unprofitable: bool = False, path: str = "switch",
                   num_frames: int | None = None) -> tuple[str, ...]:
        """Refuse (or with ``allow_unprofitable`` warn about) mask ratios that break Eq. 7-8 for this pair."""
        from stitchkit.validation import check_switch_policy

        policy = switch if not isinstance(switch, (str, Mapping)) else self.registry.create("switch", switch)[0]
        if not getattr(policy, "mask_ratios", None):
            return ()
        costs = self.costs(height=height, width=width, text_tokens=text_tokens, guided=guided, num_frames=num_frames)
        return check_switch_policy(policy, costs, allow_unprofitable=allow_unprofitable, path=path)

    # -- conveniences -----------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "StitchPipeline":
        self.adapter.to(device)
        self.small.to(device)
        return self
