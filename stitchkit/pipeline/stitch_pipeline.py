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

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from diffusers.utils import BaseOutput

from stitchkit.cost.validation import check_switch_policy, pair_costs
from stitchkit.errors import ConfigError
from stitchkit.families.loading import loading_options
from stitchkit.loop.caches import ModelCache, normalize_cache_spec
from stitchkit.loop.engine import Models, Policies, StepCallback, denoise
from stitchkit.loop.trace import BatchStep, StepRecord
from stitchkit.pipeline.conventions import (
    CALLBACK_TENSOR_INPUTS,
    check_call_arguments,
    lora_scale,
    scaled_lora,
    step_end_hook,
)
from stitchkit.pipeline.magcache_ratios import load_ratios, magcache_key, save_ratios
from stitchkit.pipeline.thread_policy import AUTO, with_thread_policy
from stitchkit.pipeline.video import frames_for
from stitchkit.registry import DEFAULT_CONTEXT, DEFAULT_MASK, Registry, get_registry
from stitchkit.sampler import largest_size, preset_sampler, resolve_sampler
from stitchkit.values import check_guidance, check_steps

logger = logging.getLogger(__name__)


@dataclass
class StitchOutput(BaseOutput):
    """``images`` as diffusers returns them for the ``output_type``; ``trace``: one record per step (for one
    sample its record; for a batch the summary of :func:`stitchkit.loop.trace.batch_record`); ``traces``: one
    trace per sample (its own stage and tokens per step); ``steps``: per step, the batched model calls.

    A diffusers ``BaseOutput``: ``out.images``, ``out["images"]`` and ``out[0]`` are the images, as with
    ``StableDiffusion3PipelineOutput``; ``out.trace`` / ``out[1]`` is stitchkit's per-step record."""

    images: Any
    trace: tuple[StepRecord, ...]
    traces: tuple[tuple[StepRecord, ...], ...] = ()
    steps: tuple[BatchStep, ...] = ()


def _cast(pipeline, small_transformer, dtype: torch.dtype) -> None:
    """Every ``nn.Module`` component of ``pipeline``, and ``small_transformer``, in ``dtype``: diffusers'
    ``torch_dtype`` leaves a component whose weights are stored in another dtype as stored (the transformers
    of a float32 checkpoint stayed float32 under ``torch_dtype=torch.bfloat16`` and the first conv failed)."""
    for module in [*pipeline.components.values(), small_transformer]:
        if isinstance(module, torch.nn.Module) and any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype=dtype)



class StitchPipeline:
    """Runs one denoising loop over a pair of transformers, policies deciding who computes what.

    Its components are attributes, under diffusers' names, as on any diffusers pipeline:
    ``pipe.transformer`` (the large model), ``pipe.small_transformer``, ``pipe.vae``, ``pipe.scheduler``,
    the text encoders and tokenizers (those the family's pipeline has)."""

    #: The tensors a ``callback_on_step_end`` may ask for, as diffusers keeps them on the pipeline class.
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)
    #: CPU threads of a call: "auto" (the CLI's choice), an int, or None (torch's setting): thread_policy.py.
    threads: int | str | None = AUTO

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
        self._progress_bar_config: dict[str, Any] = {}
        self._num_timesteps, self._guidance_scale = 0, 1.0
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
        registry = registry or get_registry()
        family = registry.family_for_checkpoint(large, **loading_options(kwargs))
        large_pipe, small_tf = family.load(large, small, torch_dtype=torch_dtype, device=device, **kwargs)
        if torch_dtype is not None:  # diffusers may leave weights stored in float32 as they were
            _cast(large_pipe, small_tf, torch_dtype)
        pair_id = large if large == small else f"{large}+{small}"
        return cls.from_pipelines(large=large_pipe, small=small_tf, registry=registry, pair_id=pair_id)

    @classmethod
    def from_pair(cls, name: str, *, registry: Registry | None = None) -> "StitchPipeline":
        """A registered pair by name (``stitchkit plugins`` lists them: ``shapes``, ``tiny-random``, ...; an
        outside package adds more through ``register_pairs``): its loader builds both models."""
        registry = registry or get_registry()
        large, small = registry.pair(name).loader()
        return cls.from_pipelines(large=large, small=small, registry=registry, pair_id=name)

    @classmethod
    def from_shapes(cls, path=None, *, torch_dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None, registry: Registry | None = None) -> "StitchPipeline":
        """The shipped CPU pair (``stitchkit/pairs/shapes``), or a shapes pair saved at ``path``."""
        if path is None:
            pipe = cls.from_pair("shapes", registry=registry)
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
    @with_thread_policy
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' default
        max_sequence_length: int = 256,
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_stop: float = 0.2,
        skip_layer_guidance_start: float = 0.01,
        mu: float | None = None,
        *,
        switch: Any = "large",
        mask: Any = None,
        context: Any = None,
        callback: StepCallback | None = None,
        progress: bool | None = None,
        allow_unprofitable: bool = False,
        num_frames: int | None = None,
        cache: Any = None,
        true_cfg_scale: float | None = None,
    ) -> StitchOutput | tuple:
        """Generate as ``StableDiffusion3Pipeline.__call__`` does, with ``switch``/``mask``/``context``
        choosing the method (a name, a ``{"kind": name, **params}`` dict, or a policy object).

        Every diffusers argument is honoured or, where stitching has no counterpart, refused with one
        :class:`ConfigError` line (:data:`REFUSED_ARGUMENTS`): ``callback_on_step_end(pipe, i, t, kwargs)``
        runs after each scheduler step and may replace ``latents``/``prompt_embeds``/``pooled_prompt_embeds``
        (the latter two hold both CFG halves, as in diffusers); ``callback`` is stitchkit's own per-step record
        (decision, mask, D_t), called just before it. ``joint_attention_kwargs`` takes diffusers' LoRA
        ``scale``. ``return_dict=False`` returns ``(images,)``. ``progress`` (default: the
        :meth:`set_progress_bar_config` ``disable`` setting, else off) shows a bar over the steps.

        A HybridStitch-like policy (one with ``mask_ratios``) is checked against Eq. 7-8 first and refused
        with a :class:`ConfigError` when its masks cannot pay off; ``allow_unprofitable=True`` (ablations)
        makes that a warning. ``num_inference_steps``/``height``/``width`` left unset take a preset's sampler
        settings (the paper's presets: 50 steps at 768², §4.1), else 28 steps at the pair's default size;
        setting other ones with such a preset warns once (:class:`stitchkit.sampler.PresetSamplerWarning`).
        ``num_frames``: for a video family, the frames to generate (its default if unset); an image family
        refuses it.

        ``cache``: diffusers' cache hooks for this generation (:mod:`stitchkit.loop.caches`): a cache name,
        ``{"kind": "magcache", **params}`` or a cache object for the large model, or
        ``{"large": ..., "small": ...}``. MagCache without ``mag_ratios`` is calibrated on first use.

        ``true_cfg_scale``: for a family whose ``encode`` takes it (FLUX, where ``guidance_scale`` is the
        distilled guidance embedded in the model), classifier-free guidance with the negative prompt, as
        ``FluxPipeline``'s argument of that name; other families refuse it (their ``guidance_scale`` is CFG)."""
        check_call_arguments(ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                             skip_guidance_layers=skip_guidance_layers, joint_attention_kwargs=joint_attention_kwargs)
        step_end = step_end_hook(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        scale = lora_scale(joint_attention_kwargs)
        if num_inference_steps is not None:  # 0 would fall back to the default steps without a word
            check_steps(num_inference_steps, "num_inference_steps")
        check_guidance(guidance_scale, "guidance_scale")  # NaN / negative refused; <= 1: guidance off
        policies = self.resolve_policies(switch, mask, context)
        cache_specs = self.resolve_caches(cache)
        adapter = self.adapter
        # A paper preset brings its steps and size where the call gives none (stitchkit.sampler).
        sampler = resolve_sampler(
            preset_sampler(self.registry, switch), steps=num_inference_steps, height=height, width=width,
            default_size=adapter.default_size(),
            max_size=largest_size(adapter.large_transformer.config, adapter.patch_size, adapter.vae_scale_factor))
        num_inference_steps, height, width = sampler.steps, sampler.height, sampler.width
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
        num_images_per_prompt = num_images_per_prompt or 1
        family_options = {}
        if true_cfg_scale is not None:
            if "true_cfg_scale" not in inspect.signature(adapter.encode).parameters:
                raise ConfigError("true_cfg_scale", f"is not used by the {self.family.name} family",
                                  "use guidance_scale (classifier-free guidance there) and leave it unset")
            family_options["true_cfg_scale"] = true_cfg_scale
        cond = adapter.encode(
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length, prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
            **({"lora_scale": scale} if scale is not None else {}), **family_options,
        )
        self.check_plan(policies.switch, context=policies.context, height=height, width=width,
                        text_tokens=cond.prompt_embeds.shape[1], guided=cond.guided,
                        allow_unprofitable=allow_unprofitable, num_frames=num_frames)
        latents = adapter.prepare_latents(batch_size=batch * num_images_per_prompt, height=height, width=width,
                                          num_frames=num_frames, dtype=cond.prompt_embeds.dtype,
                                          generator=generator, latents=latents)
        scheduler = adapter.new_scheduler()
        timesteps = adapter.timesteps(scheduler, num_inference_steps=num_inference_steps, latents=latents,
                                      sigmas=sigmas, mu=mu)
        self._num_timesteps, self._guidance_scale = len(timesteps), guidance_scale
        models = Models(large=adapter.large_transformer, masked_large=self.masked_large, small=self.small,
                        patch_size=adapter.patch_size, forward=self.family.forward)
        caches = self._model_caches(cache_specs, models=models, policies=policies, latents=latents,
                                    cond=cond, num_steps=len(timesteps), mu=mu, sigmas=sigmas,
                                    num_inference_steps=num_inference_steps)
        if progress is None:
            progress = not self._progress_bar_config.get("disable", True)
        with scaled_lora((adapter.large_transformer, self.small), scale):
            result = denoise(
                models=models, policies=policies, scheduler=scheduler, timesteps=timesteps, latents=latents,
                prompt_embeds=cond.prompt_embeds, pooled_projections=cond.pooled_projections,
                guidance_scale=cond.guidance_scale, callback=callback, progress=progress, step_end=step_end,
                caches=caches, guidance=cond.guidance,
            )
        images = adapter.decode(result.latents, output_type)
        if not return_dict:
            return (images,)
        return StitchOutput(images=images, trace=result.trace, traces=result.traces, steps=result.steps)

    def resolve_caches(self, cache: Any, path: str = "cache") -> dict[str, Any]:
        """``{role: cache object}`` from ``cache=`` (see :func:`stitchkit.loop.caches.normalize_cache_spec`)."""
        per_role = isinstance(cache, Mapping) and "kind" not in cache
        return {role: self.registry.create("cache", spec, path=f"{path}.{role}" if per_role else path)[0]
                for role, spec in normalize_cache_spec(cache, path).items()}

    def _model_caches(self, specs: Mapping[str, Any], *, models: Models, policies: Policies, latents, cond,
                      num_steps: int, **schedule: Any) -> dict[str, Any]:
        """One :class:`stitchkit.loop.caches.ModelCache` per cached model; MagCache's ratios from the disk cache,
        or calibrated now: one generation of that model alone in diffusers' calibrate mode, same inputs."""
        out = {}
        for role, spec in specs.items():
            model = models.large if role == "large" else models.small
            ratios = None
            if getattr(spec, "needs_calibration", False):
                key = magcache_key(pair_id=self.pair_id, role=role, model=model, num_steps=num_steps,
                                   num_tokens=math.prod(latents.shape[2:]), guided=cond.guided)
                ratios = load_ratios(key)
                logger.info("MagCache ratios of the %s model: %s", role,
                                                 "calibrating now" if ratios is None else "read from the cache")
                if ratios is None:
                    probe = ModelCache(model=model, cache=spec, role=role, calibrating=True)
                    scheduler = self.adapter.new_scheduler()
                    timesteps = self.adapter.timesteps(scheduler, latents=latents, **schedule)
                    denoise(models=models, policies=self.resolve_policies(role), scheduler=scheduler,
                            timesteps=timesteps, latents=latents.clone(), prompt_embeds=cond.prompt_embeds,
                            pooled_projections=cond.pooled_projections, guidance_scale=cond.guidance_scale,
                            caches={role: probe}, guidance=cond.guidance)
                    ratios = tuple(probe.calibrated)
                    save_ratios(key, list(ratios), pair=self.pair_id, role=role, num_steps=num_steps)
            out[role] = ModelCache(model=model, cache=spec, role=role, mag_ratios=ratios)
        return out

    def costs(self, *, height: int, width: int, text_tokens: int, guided: bool, num_frames: int | None = None):
        """The pair's per-step costs at this size: its cached profile, else a FLOPs estimate (``.source``)."""
        num_frames = frames_for(self.adapter, num_frames)
        return pair_costs(
            pair_id=self.pair_id, large_config=self.adapter.large_transformer.config,
            small_config=self.small.config, height=height, width=width,
            num_tokens=self.adapter.num_tokens(height=height, width=width, num_frames=num_frames),
            text_tokens=text_tokens, batch=2 if guided else 1, dtype=str(self.adapter.dtype).removeprefix("torch."),
            device=self.adapter.device.type, flops=self.family.flops, num_frames=num_frames)

    def check_plan(self, switch: Any, *, height: int, width: int, text_tokens: int, guided: bool,
                   allow_unprofitable: bool = False, path: str = "switch", context: Any = None,
                   num_frames: int | None = None) -> tuple[str, ...]:
        """Refuse (or with ``allow_unprofitable`` warn about) mask ratios that break Eq. 7-8 for this pair;
        ``context`` (else the preset's, else the default) decides whether a hybrid step computes every token."""
        policies = self.resolve_policies(switch, None, context)
        if not getattr(policies.switch, "mask_ratios", None):
            return ()
        costs = self.costs(height=height, width=width, text_tokens=text_tokens, guided=guided, num_frames=num_frames)
        return check_switch_policy(policies.switch, costs, allow_unprofitable=allow_unprofitable, path=path,
                                   computes_all_tokens=getattr(policies.context, "computes_all_tokens", False))

    # -- conveniences (diffusers' pipeline attributes) -----------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        """A component by its diffusers name (``pipe.transformer``, ``pipe.vae``, ``pipe.small_transformer``)."""
        if name.startswith("_") or name in ("adapter", "small"):  # not set yet: no component lookup
            raise AttributeError(name)
        components = self.components
        if name in components:
            return components[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def to(self, device: str | torch.device) -> "StitchPipeline":
        self.adapter.to(device)
        self.small.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the models run (the large pipeline's execution device)."""
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def components(self) -> dict[str, Any]:
        """The large pipeline's components (diffusers' names) plus ``small_transformer``."""
        pipeline = getattr(self.adapter, "pipeline", None)
        parts = dict(pipeline.components) if pipeline is not None else {"transformer": self.adapter.large_transformer}
        return {**parts, "small_transformer": self.small}

    @property
    def num_timesteps(self) -> int:
        """Steps of the current (or last) generation, as diffusers' callbacks read it."""
        return self._num_timesteps

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def interrupt(self) -> bool:
        """Always ``False``: stitchkit's loop cannot be interrupted from a callback (raise instead)."""
        return False

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """As in diffusers; ``disable=False`` turns the per-step bar on for calls that do not pass ``progress``."""
        self._progress_bar_config = dict(kwargs)

    def enable_model_cpu_offload(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigError("enable_model_cpu_offload", "is not supported",
                          "a stitched step alternates both transformers and keeps the K/V cache on the device; "
                          "load the pair on one device with .to(device)")

    def enable_sequential_cpu_offload(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigError("enable_sequential_cpu_offload", "is not supported",
                          "a stitched step alternates both transformers and keeps the K/V cache on the device; "
                          "load the pair on one device with .to(device)")
