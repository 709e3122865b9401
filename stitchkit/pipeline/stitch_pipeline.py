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

A ``StitchPipeline`` is a diffusers ``DiffusionPipeline`` whose components are the large pipeline's plus
``small_transformer`` (:mod:`stitchkit.pipeline.components`): ``save_pretrained`` writes one folder that a
single-path ``from_pretrained`` reads back, and ``.to``, attention slicing and the offload methods are
diffusers' own.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import attrs
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from stitchkit.cost.validation import check_switch_policy, pair_costs
from stitchkit.errors import ConfigError
from stitchkit.families.loading import loading_options
from stitchkit.loop.caches import ModelCache, normalize_cache_spec
from stitchkit.loop.engine import Models, Policies, StepCallback, denoise
from stitchkit.loop.method_checks import cache_paths, check_method
from stitchkit.loop.trace import BatchStep, StepRecord
from stitchkit.pipeline.compile import compile_pair
from stitchkit.pipeline.lora import load_lora, set_adapters, unload_lora
from stitchkit.pipeline.conventions import (
    CALLBACK_TENSOR_INPUTS,
    check_call_arguments,
    lora_scale,
    scaled_lora,
    step_end_hook,
)
from stitchkit.pipeline.components import (
    SMALL,
    STITCH_PARAMETERS,
    component_class,
    large_pipeline_class,
    offload_sequence,
)
from stitchkit.pipeline.magcache_ratios import load_ratios, magcache_key, save_ratios
from stitchkit.pipeline.sizes import check_sides
from stitchkit.pipeline.skip_layer_guidance import skip_layer_guidance
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
    components = getattr(pipeline, "components", None)
    if components is None:  # not a DiffusionPipeline (the shapes pair): its attributes are its components
        components = {f.name: getattr(pipeline, f.name) for f in attrs.fields(type(pipeline))}
    for module in [*components.values(), small_transformer]:
        if isinstance(module, torch.nn.Module) and any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype=dtype)



class StitchPipeline(DiffusionPipeline):
    """Runs one denoising loop over a pair of transformers, policies deciding who computes what.

    A diffusers ``DiffusionPipeline``: its components are registered under diffusers' names, the large
    pipeline's (``pipe.transformer`` is the large model, ``pipe.vae``, ``pipe.scheduler``, the text encoders
    and tokenizers its family has) plus ``pipe.small_transformer``; they are the very modules of the large
    pipeline the adapter wraps, so ``.to(device, dtype)``, the offload methods, attention slicing and
    ``save_pretrained`` act on both. ``model_index.json`` also holds the family, the pair id and the large
    pipeline's class, which a single-path :meth:`from_pretrained` reads back."""

    #: The tensors a ``callback_on_step_end`` may ask for, as diffusers keeps them on the pipeline class.
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)
    #: CPU threads of a call: "auto" (the CLI's choice), an int, or None (torch's setting): thread_policy.py.
    threads: int | str | None = AUTO

    def __init__(self, adapter, small_transformer: torch.nn.Module, registry: Registry | None = None,
                 pair_id: str | None = None, family=None) -> None:
        """``adapter``: a family's pipeline adapter (:class:`stitchkit.families.Adapter`); ``family``: its
        :class:`~stitchkit.families.Family`, else the one registered under ``adapter.family``."""
        super().__init__()
        self.registry = registry or get_registry()
        self.family = family or self.registry.families[adapter.family]
        self.family.check_pair(adapter.large_transformer, small_transformer)
        self.adapter = adapter
        self._progress_bar_config: dict[str, Any] = {}
        self._num_timesteps, self._guidance_scale = 0, 1.0
        pipeline = getattr(adapter, "pipeline", None)
        if hasattr(adapter, "components"):  # an adapter whose large side is not a diffusers pipeline
            components = dict(adapter.components())
        else:
            components = dict(pipeline.components) if pipeline is not None else {"transformer": adapter.large_transformer}
        if isinstance(pipeline, DiffusionPipeline):
            self._optional_components = list(pipeline._optional_components)
            self.model_cpu_offload_seq = offload_sequence(pipeline.model_cpu_offload_seq, components)
            self.register_to_config(large_pipeline=(type(pipeline).__module__.split(".")[0], type(pipeline).__name__))
        else:
            self.model_cpu_offload_seq = offload_sequence(None, components)
        self._stitch_components = (*components, SMALL)
        self.register_modules(**components, **{SMALL: small_transformer})
        self.masked_large = self.family.masked_runner(adapter.large_transformer)
        #: Names the pair in profiles and result tables.
        self.pair_id = pair_id or "+".join(
            str(m.config.get("_name_or_path") or f"{m.config.num_layers}x{m.config.num_attention_heads}")
            for m in (adapter.large_transformer, small_transformer))
        self.register_to_config(family=self.family.name, pair_id=self.pair_id)

    @property
    def small(self) -> torch.nn.Module:
        """The small transformer (``small_transformer``)."""
        return self.small_transformer

    def __setattr__(self, name: str, value: Any) -> None:
        """A component set on the pipeline is set on the large pipeline too (they share their modules), and a
        new ``transformer`` gets its own masked runner."""
        super().__setattr__(name, value)
        if name in self.__dict__.get("_stitch_components", ()) and name != SMALL:
            pipeline = getattr(self.adapter, "pipeline", None)
            if pipeline is not None and getattr(pipeline, name, value) is not value:
                setattr(pipeline, name, value)
            if name == "transformer" and "masked_large" in self.__dict__:
                self.masked_large = self.family.masked_runner(value)

    @classmethod
    def _get_signature_keys(cls, obj):
        """diffusers reads a pipeline's components from its ``__init__`` signature; an instance's are what
        it registered (a :func:`~stitchkit.pipeline.components.component_class` has them in its signature)."""
        names = obj.__dict__.get("_stitch_components") if isinstance(obj, StitchPipeline) else None
        if names is None:
            return super()._get_signature_keys(obj)
        return sorted(names), sorted(STITCH_PARAMETERS)

    @classmethod
    def with_components_of(cls, large_class: type) -> type["StitchPipeline"]:
        """The ``StitchPipeline`` class whose ``__init__`` takes ``large_class``'s components plus
        ``small_transformer`` (and ``pair_id``), as diffusers builds pipelines: ``StitchPipeline.with_components_of(
        StableDiffusion3Pipeline)(**sd3_pipe.components, small_transformer=small)``."""
        return component_class(StitchPipeline, large_class)

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
        if "_components_of" in cls.__dict__:  # a with_components_of class: its __init__ takes components
            cls = cls.__mro__[1]
        return cls(family.adapter(large), small_transformer, registry=registry, pair_id=pair_id, family=family)

    @classmethod
    def from_pretrained(cls, large: str, small: str | None = None, *, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, registry: Registry | None = None,
                        **kwargs: Any) -> "StitchPipeline":
        """One folder written by :meth:`save_pretrained` (``small`` left out), or two checkpoints.

        One folder: diffusers' own ``DiffusionPipeline.from_pretrained`` loads it, with all its options
        (``torch_dtype``/``dtype`` or a per-component dict, ``variant``, ``device_map``, ``use_safetensors``,
        components passed by name), into the ``StitchPipeline`` class of the large pipeline's components
        (:meth:`with_components_of`); ``device`` moves it after loading.

        Two checkpoints: hub ids or local folders in diffusers format; only the small pipeline's transformer is loaded.

        The family is the one that claims the ``large`` folder or lists its pipeline class
        (``model_index.json``). Extra keyword arguments go to the large pipeline's ``from_pretrained``
        (``text_encoder_3=None`` to run SD3 without T5, say); the loading options among them
        (``local_files_only``, ``revision``, ``cache_dir``, ``token``, ``variant``, ``use_safetensors``) go to
        the small transformer's too.
        """
        if small is None:
            return cls._from_folder(large, torch_dtype=torch_dtype, device=device, registry=registry, **kwargs)
        registry = registry or get_registry()
        family = registry.family_for_checkpoint(large, **loading_options(kwargs))
        large_pipe, small_tf = family.load(large, small, torch_dtype=torch_dtype, device=device, **kwargs)
        if torch_dtype is not None:  # diffusers may leave weights stored in float32 as they were
            _cast(large_pipe, small_tf, torch_dtype)
        pair_id = large if large == small else f"{large}+{small}"
        return cls.from_pipelines(large=large_pipe, small=small_tf, registry=registry, pair_id=pair_id)

    @classmethod
    def _from_folder(cls, path: str, *, torch_dtype: torch.dtype | None, device: str | torch.device | None,
                     registry: Registry | None, **kwargs: Any) -> "StitchPipeline":
        """A folder (or hub id) whose ``model_index.json`` names ``StitchPipeline``."""
        options = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
        config = DiffusionPipeline.load_config(path, **options)
        if config.get("_class_name") != StitchPipeline.__name__:
            raise ConfigError("small", f"missing, and {path} holds a {config.get('_class_name')!r}, not a StitchPipeline",
                              "pass the small checkpoint too: from_pretrained(large, small)")
        pipeline_class = cls.with_components_of(large_pipeline_class(config.get("large_pipeline"),
                                                                     f"{path}/model_index.json:large_pipeline"))
        # A component saved as absent ([null, null]: SD3 without T5) is passed as None, as one would by hand.
        absent = {k: None for k, v in config.items() if isinstance(v, list) and v == [None, None]}
        loaded = DiffusionPipeline.from_pretrained.__func__(pipeline_class, path, torch_dtype=torch_dtype,
                                                           registry=registry, **{**absent, **kwargs})
        return loaded.to(device) if device is not None else loaded

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``: one folder, every component in its subfolder (``small_transformer/``
        too) and a ``model_index.json`` naming ``StitchPipeline``, the family, the pair id and the large
        pipeline's class; :meth:`from_pretrained` with that one path reads it back."""
        if "large_pipeline" not in self.config:
            raise ConfigError("save_pretrained", f"the {self.family.name} pair's large side is a "
                              f"{type(getattr(self.adapter, 'pipeline', self.adapter)).__name__}, not a diffusers pipeline",
                              "save it in its family's own format (the shapes pair: ShapesPair.save, loaded by "
                              "StitchPipeline.from_shapes(path))")
        super().save_pretrained(save_directory, *args, **kwargs)

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

        ``skip_guidance_layers``: SD3.5's skip-layer guidance, as diffusers runs it, on the steps of its window where
        every sample runs the large model in full; a step in the window that is not one is refused
        (:mod:`stitchkit.pipeline.skip_layer_guidance`).

        ``true_cfg_scale``: for a family whose ``encode`` takes it (FLUX, where ``guidance_scale`` is the
        distilled guidance embedded in the model), classifier-free guidance with the negative prompt, as
        ``FluxPipeline``'s argument of that name; other families refuse it (their ``guidance_scale`` is CFG)."""
        check_call_arguments(ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                             joint_attention_kwargs=joint_attention_kwargs)
        step_end = step_end_hook(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        scale = lora_scale(joint_attention_kwargs)
        if num_inference_steps is not None:  # 0 would fall back to the default steps without a word
            check_steps(num_inference_steps, "num_inference_steps")
        check_guidance(guidance_scale, "guidance_scale")  # NaN / negative refused; <= 1: guidance off
        policies = self.resolve_policies(switch, mask, context)
        cache_specs = self.resolve_caches(cache)
        check_method(policies.switch, mask=mask, cache_roles=cache_paths(cache))  # a mask/cache it never uses
        adapter = self.adapter
        # A paper preset brings its steps and size where the call gives none (stitchkit.sampler).
        sampler = resolve_sampler(
            preset_sampler(self.registry, switch), steps=num_inference_steps, height=height, width=width,
            default_size=adapter.default_size(),
            max_size=largest_size(adapter.large_transformer.config, adapter.patch_size, adapter.vae_scale_factor))
        num_inference_steps, height, width = sampler.steps, sampler.height, sampler.width
        check_sides(adapter, self.small, height, width)  # before diffusers' deep ValueError (pipeline.sizes)
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
        after_guidance = skip_layer_guidance(
            transformer=adapter.large_transformer, layers=skip_guidance_layers, scale=skip_layer_guidance_scale,
            start=skip_layer_guidance_start, stop=skip_layer_guidance_stop, num_steps=len(timesteps),
            guided=cond.guided, prompt_embeds=cond.prompt_embeds, pooled_projections=cond.pooled_projections,
            switch=policies.switch)
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
                caches=caches, guidance=cond.guidance, after_guidance=after_guidance,
            )
        images = adapter.decode(result.latents, output_type)
        self.maybe_free_model_hooks()  # as every diffusers pipeline ends: the offload hooks back to their start
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

    # -- torch.compile and LoRA (stitchkit.pipeline.compile, stitchkit.pipeline.lora) -----------------------
    def compile_repeated_blocks(self, **torch_compile_options: Any) -> "StitchPipeline":
        """Regional ``torch.compile`` of both transformers, as diffusers' ``compile_repeated_blocks``; the
        masked runner runs the same compiled blocks, token counts dynamic (:mod:`stitchkit.pipeline.compile`)."""
        compile_pair((self.adapter.large_transformer, self.small), **torch_compile_options)
        return self

    def load_lora_weights(self, weights: Any, *, adapter_name: str | None = None, into: str = "both",
                          **kwargs: Any) -> str:
        """Load a LoRA into the ``"large"``, ``"small"`` or ``"both"`` models with diffusers' loaders
        (:func:`stitchkit.pipeline.lora.load_lora`); returns the adapter name."""
        return load_lora(getattr(self.adapter, "pipeline", None), self.adapter.large_transformer, self.small,
                         weights, adapter_name=adapter_name, into=into, **kwargs)

    def set_adapters(self, adapter_names: Any, adapter_weights: Any = None) -> None:
        """diffusers' ``set_adapters`` on every model that holds the adapters (one scale for both)."""
        set_adapters(getattr(self.adapter, "pipeline", None), self.adapter.large_transformer, self.small,
                     adapter_names, adapter_weights)

    def unload_lora_weights(self) -> None:
        unload_lora(getattr(self.adapter, "pipeline", None), self.adapter.large_transformer, self.small)

    # -- diffusers' pipeline attributes (the rest come from DiffusionPipeline) ----------------------------
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
