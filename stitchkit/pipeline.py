"""``StitchPipeline``: a diffusers-style pipeline that stitches a large and a small transformer.

    >>> from stitchkit import StitchPipeline
    >>> pipe = StitchPipeline.from_pretrained("stabilityai/stable-diffusion-3.5-large",
    ...                                       "stabilityai/stable-diffusion-3-medium-diffusers",
    ...                                       torch_dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    >>> out = pipe("a bird on a branch", switch="hybridstitch-30")                     # doctest: +SKIP
    >>> out.images[0], out.trace[-1].stage                                               # doctest: +SKIP

Text encoders, VAE and scheduler come from the large pipeline; the small model contributes only its
transformer. The caller's pipelines are never changed: the scheduler is copied, attention processors are
installed for one generation and restored after it (also on error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from diffusers.utils import BaseOutput

from stitchkit.adapters.sd3 import SD3Adapter, check_pair
from stitchkit.engine import Models, Policies, StepCallback, denoise
from stitchkit.errors import ConfigError
from stitchkit.registry import Registry, get_registry
from stitchkit.trace import StepRecord

#: What ``mask=`` and ``context=`` default to when neither the call nor a preset names them.
DEFAULT_MASK = "top-k"
DEFAULT_CONTEXT = "kv-cache"
_LOADING_OPTIONS = ("local_files_only", "revision", "cache_dir", "token", "variant", "use_safetensors")

#: The tensors a ``callback_on_step_end`` may ask for and replace, as in ``StableDiffusion3Pipeline``.
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "pooled_prompt_embeds")

#: ``StableDiffusion3Pipeline.__call__`` arguments whose default differs here, with the reason (the signature
#: test compares every other default with diffusers'). A preset that needs to know whether the caller passed
#: ``num_inference_steps``/``height``/``width`` may make those ``None`` and list them here.
DIFFUSERS_DEFAULT_EXCEPTIONS: dict[str, str] = {}

#: Arguments accepted by name (a diffusers script passes them) and refused when set, with the reason.
REFUSED_ARGUMENTS: dict[str, str] = {
    "ip_adapter_image": "IP-Adapter image conditioning is not supported by stitchkit's masked attention; "
                        "leave it None",
    "ip_adapter_image_embeds": "IP-Adapter image conditioning is not supported by stitchkit's masked "
                               "attention; leave it None",
    "skip_guidance_layers": "skip-layer guidance needs a third transformer pass with layers skipped, which "
                            "has no counterpart in small-model steps or in masked hybrid steps (whose K/V "
                            "cache comes from the full model); leave it None",
}


@dataclass
class StitchOutput(BaseOutput):
    """``images`` as diffusers returns them for the ``output_type``; ``trace``: one record per step.

    A diffusers ``BaseOutput``: ``out.images``, ``out["images"]`` and ``out[0]`` are the images, as with
    ``StableDiffusion3PipelineOutput``; ``out.trace`` / ``out[1]`` is stitchkit's per-step record."""

    images: Any
    trace: tuple[StepRecord, ...]


def _cast(pipeline, small_transformer, dtype: torch.dtype) -> None:
    """Every ``nn.Module`` component of ``pipeline``, and ``small_transformer``, in ``dtype``: diffusers'
    ``torch_dtype`` leaves a component whose weights are stored in another dtype as stored (the transformers
    of a float32 checkpoint stayed float32 under ``torch_dtype=torch.bfloat16`` and the first conv failed)."""
    for module in [*pipeline.components.values(), small_transformer]:
        if isinstance(module, torch.nn.Module) and any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype=dtype)


def _load_masked_transformer():
    from stitchkit.models.sd3_masked import MaskedTransformer

    return MaskedTransformer


class StitchPipeline:
    """Runs one denoising loop over a pair of transformers, policies deciding who computes what."""

    def __init__(self, adapter: SD3Adapter, small_transformer: torch.nn.Module,
                 registry: Registry | None = None, pair_id: str | None = None) -> None:
        check_pair(adapter.large_transformer, small_transformer)
        self.adapter = adapter
        self.small = small_transformer
        self.registry = registry or get_registry()
        self.masked_large = _load_masked_transformer()(adapter.large_transformer)
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
        """``large``: a ``StableDiffusion3Pipeline``; ``small``: a ``StableDiffusion3Pipeline`` or its transformer."""
        from diffusers import StableDiffusion3Pipeline

        if not isinstance(large, StableDiffusion3Pipeline):
            raise ConfigError("large", f"is a {type(large).__name__}", "pass a StableDiffusion3Pipeline")
        small_transformer = getattr(small, "transformer", small)
        if not isinstance(small_transformer, torch.nn.Module) or not hasattr(small_transformer, "config"):
            raise ConfigError("small", f"is a {type(small).__name__}",
                              "pass a StableDiffusion3Pipeline or an SD3Transformer2DModel")
        return cls(SD3Adapter(large), small_transformer, registry=registry, pair_id=pair_id)

    @classmethod
    def from_pretrained(cls, large: str, small: str, *, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, registry: Registry | None = None,
                        **kwargs: Any) -> "StitchPipeline":
        """Hub ids or local folders in diffusers format; only the small pipeline's transformer is loaded.

        Extra keyword arguments go to the large pipeline's ``from_pretrained`` (``text_encoder_3=None`` to run
        without T5, say); the loading options among them (``local_files_only``, ``revision``, ``cache_dir``,
        ``token``, ``variant``, ``use_safetensors``) go to the small transformer's too.
        """
        from pathlib import Path

        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        if (Path(large) / "transformer_large").is_dir():  # a shapes-pair folder holds both transformers
            if Path(small).resolve() != Path(large).resolve():
                raise ConfigError("small", "a shapes-pair folder holds both models", f"pass {large!r} twice")
            return cls.from_shapes(large, torch_dtype=torch_dtype or torch.float32, device=device,
                                   registry=registry)
        large_pipe = StableDiffusion3Pipeline.from_pretrained(large, torch_dtype=torch_dtype, **kwargs)
        loading = {k: v for k, v in kwargs.items() if k in _LOADING_OPTIONS}
        small_tf = SD3Transformer2DModel.from_pretrained(small, subfolder="transformer", torch_dtype=torch_dtype,
                                                         **loading)
        if torch_dtype is not None:  # diffusers may leave weights stored in float32 as they were
            _cast(large_pipe, small_tf, torch_dtype)
        if device is not None:
            large_pipe.to(device)
            small_tf.to(device)
        return cls.from_pipelines(large=large_pipe, small=small_tf, registry=registry, pair_id=f"{large}+{small}")

    @classmethod
    def from_shapes(cls, path=None, *, torch_dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None, registry: Registry | None = None) -> "StitchPipeline":
        """The shipped CPU pair (``stitchkit/pairs/shapes``), or a shapes pair saved at ``path``."""
        from stitchkit.adapters.shapes import ShapesAdapter
        from stitchkit.shapes.pair import load_shapes_pair

        pair = load_shapes_pair(path, dtype=torch_dtype, device=device or "cpu")
        return cls(ShapesAdapter(pair), pair.small, registry=registry, pair_id="shapes" if path is None else str(path))

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
        makes that a warning."""
        from stitchkit.diffusers_compat import check_call_arguments, lora_scale, step_end_hook

        check_call_arguments(ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                             skip_guidance_layers=skip_guidance_layers, joint_attention_kwargs=joint_attention_kwargs)
        step_end = step_end_hook(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        scale = lora_scale(joint_attention_kwargs)
        policies = self.resolve_policies(switch, mask, context)
        adapter = self.adapter
        default = adapter.default_size()
        height, width = height or default, width or default
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
        cond = adapter.encode(
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length, prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
            **({"lora_scale": scale} if scale is not None else {}),
        )
        self.check_plan(policies.switch, height=height, width=width, text_tokens=cond.prompt_embeds.shape[1],
                        guided=cond.guided, allow_unprofitable=allow_unprofitable)
        latents = adapter.prepare_latents(batch_size=batch * num_images_per_prompt, height=height, width=width,
                                          dtype=cond.prompt_embeds.dtype, generator=generator, latents=latents)
        scheduler = adapter.new_scheduler()
        timesteps = adapter.timesteps(scheduler, num_inference_steps=num_inference_steps, latents=latents,
                                      sigmas=sigmas, mu=mu)
        self._num_timesteps, self._guidance_scale = len(timesteps), guidance_scale
        models = Models(large=adapter.large_transformer, masked_large=self.masked_large, small=self.small,
                        patch_size=adapter.patch_size)
        if progress is None:
            progress = not self._progress_bar_config.get("disable", True)
        from stitchkit.diffusers_compat import scaled_lora

        with scaled_lora((adapter.large_transformer, self.small), scale):
            latents, trace = denoise(
                models=models, policies=policies, scheduler=scheduler, timesteps=timesteps, latents=latents,
                prompt_embeds=cond.prompt_embeds, pooled_projections=cond.pooled_projections,
                guidance_scale=cond.guidance_scale, callback=callback, progress=progress, step_end=step_end,
            )
        images = adapter.decode(latents, output_type)
        if not return_dict:
            return (images,)
        return StitchOutput(images=images, trace=tuple(trace))

    def costs(self, *, height: int, width: int, text_tokens: int, guided: bool):
        """The pair's per-step costs at this size: its cached profile, else a FLOPs estimate (``.source``)."""
        from stitchkit.validation import pair_costs

        vae_factor = self.adapter.vae_scale_factor
        p = self.adapter.patch_size
        return pair_costs(
            pair_id=self.pair_id, large_config=self.adapter.large_transformer.config,
            small_config=self.small.config, height=height, width=width,
            num_tokens=(height // vae_factor // p) * (width // vae_factor // p), text_tokens=text_tokens,
            batch=2 if guided else 1, dtype=str(self.adapter.dtype).removeprefix("torch."),
            device=self.adapter.device.type)

    def check_plan(self, switch: Any, *, height: int, width: int, text_tokens: int, guided: bool,
                   allow_unprofitable: bool = False, path: str = "switch") -> tuple[str, ...]:
        """Refuse (or with ``allow_unprofitable`` warn about) mask ratios that break Eq. 7-8 for this pair."""
        from stitchkit.validation import check_switch_policy

        policy = switch if not isinstance(switch, (str, Mapping)) else self.registry.create("switch", switch)[0]
        if not getattr(policy, "mask_ratios", None):
            return ()
        costs = self.costs(height=height, width=width, text_tokens=text_tokens, guided=guided)
        return check_switch_policy(policy, costs, allow_unprofitable=allow_unprofitable, path=path)

    # -- conveniences (diffusers' pipeline attributes) -----------------------------------------------------
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
