"""diffusers' call conventions for :meth:`StitchPipeline.__call__`: what is honoured and what is refused.

A script written for ``StableDiffusion3Pipeline`` should run unchanged on a ``StitchPipeline``, or fail with
one line saying which argument stitchkit cannot honour and why (:data:`REFUSED_ARGUMENTS`).
Honoured here: ``callback_on_step_end`` (with ``callback_on_step_end_tensor_inputs``, diffusers'
``PipelineCallback`` objects included) and ``joint_attention_kwargs={"scale": s}`` (the LoRA scale, for the
text encoders and both transformers, as diffusers applies it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

from stitchkit.errors import ConfigError

__all__ = ["CALLBACK_TENSOR_INPUTS", "DIFFUSERS_DEFAULT_EXCEPTIONS", "REFUSED_ARGUMENTS", "check_call_arguments",
           "lora_scale", "scaled_lora", "step_end_hook"]

#: The tensors a ``callback_on_step_end`` may ask for and replace, as in ``StableDiffusion3Pipeline``.
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "pooled_prompt_embeds")

#: ``StableDiffusion3Pipeline.__call__`` arguments whose default differs here, with the reason (the signature
#: test compares every other default with diffusers'). A preset that needs to know whether the caller passed
#: ``num_inference_steps``/``height``/``width`` may make those ``None`` and list them here.
DIFFUSERS_DEFAULT_EXCEPTIONS: dict[str, str] = {
    "num_inference_steps": "None: a preset's sampler settings apply (the paper's 50 steps), else diffusers' 28",
}

#: Arguments accepted by name (a diffusers script passes them) and refused when set, with the reason.
REFUSED_ARGUMENTS: dict[str, str] = {
    "ip_adapter_image": "IP-Adapter image conditioning is not supported by stitchkit's masked attention; "
                        "leave it None",
    "ip_adapter_image_embeds": "IP-Adapter image conditioning is not supported by stitchkit's masked "
                               "attention; leave it None",
}


def check_call_arguments(**arguments: Any) -> None:
    """Refuse, with one line, every argument of :data:`REFUSED_ARGUMENTS` that is set, and
    ``joint_attention_kwargs`` other than ``scale``."""
    for name, why in REFUSED_ARGUMENTS.items():
        if arguments.get(name) is not None:
            raise ConfigError(name, "is not supported", why)
    extra = sorted(set(arguments.get("joint_attention_kwargs") or {}) - {"scale"})
    if extra:
        raise ConfigError(f"joint_attention_kwargs.{extra[0]}", "is not supported",
                          "stitchkit's attention processors take only 'scale' (the LoRA scale)")


def lora_scale(joint_attention_kwargs: dict[str, Any] | None) -> float | None:
    """The LoRA ``scale`` in ``joint_attention_kwargs``, if any."""
    if not joint_attention_kwargs or "scale" not in joint_attention_kwargs:
        return None
    scale = joint_attention_kwargs["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError("joint_attention_kwargs.scale", f"{scale!r} is not a number", "e.g. 0.8")
    return float(scale)


@contextlib.contextmanager
def scaled_lora(models: Iterable[Any], scale: float | None) -> Iterator[None]:
    """Scale the PEFT LoRA layers of ``models`` by ``scale`` for the loop and undo it after, as
    ``SD3Transformer2DModel.forward`` does per call with ``joint_attention_kwargs={"scale": ...}``. stitchkit's
    masked forward bypasses that path, so the scaling is done here once for both transformers. Without the
    PEFT backend there are no LoRA layers and nothing to scale (diffusers ignores the scale then too)."""
    from diffusers.utils import USE_PEFT_BACKEND

    models = list(models)
    if scale is None or scale == 1.0 or not USE_PEFT_BACKEND:
        yield
        return
    from diffusers.utils import scale_lora_layers, unscale_lora_layers

    for model in models:
        scale_lora_layers(model, scale)
    try:
        yield
    finally:
        for model in models:
            unscale_lora_layers(model, scale)


def step_end_hook(pipe: Any, callback: Callable[..., dict] | None, tensor_inputs: Iterable[str] | None):
    """The engine's ``step_end`` hook running diffusers' ``callback_on_step_end(pipe, i, t, kwargs)``: it gets
    the requested tensors (``latents``, ``prompt_embeds``, ``pooled_prompt_embeds``) and may return
    replacements, exactly as in ``StableDiffusion3Pipeline``. ``None`` when there is no callback."""
    if callback is None:
        return None
    try:
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
    except ImportError:  # diffusers without callback classes
        pass
    if not callable(callback):
        raise ConfigError("callback_on_step_end", f"is a {type(callback).__name__}",
                          "pass a function (pipe, step, timestep, callback_kwargs) -> dict")
    wanted = list(tensor_inputs or ())
    unknown = [k for k in wanted if k not in CALLBACK_TENSOR_INPUTS]
    if unknown:
        raise ConfigError("callback_on_step_end_tensor_inputs", f"{unknown[0]!r} is not a callback tensor",
                          "allowed: " + ", ".join(CALLBACK_TENSOR_INPUTS))

    def step_end(i, t, latents, prompt_embeds, pooled_prompt_embeds):
        available = {"latents": latents, "prompt_embeds": prompt_embeds,
                     "pooled_prompt_embeds": pooled_prompt_embeds}
        outputs = callback(pipe, i, t, {k: available[k] for k in wanted}) or {}
        return (outputs.pop("latents", latents), outputs.pop("prompt_embeds", prompt_embeds),
                outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds))

    return step_end
