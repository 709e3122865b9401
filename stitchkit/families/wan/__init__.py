"""The Wan 2.1 text-to-video family (``WanPipeline``, ``WanTransformer3DModel``: the 14B and 1.3B T2V
checkpoints share VAE, umT5 encoder and patchify, so they stitch), registered through the same pluggy
hooks an outside package uses.

Files: ``adapter.py`` (the pipeline adapter), ``masked.py`` (the masked runner with its K/V cache),
``forward.py`` (the stock call), ``flops.py`` (the FLOP model), ``tiny_random.py`` (the offline test pair), ``paper_configs.py`` (the real
transformers' configs, for random-weight benchmarks on a GPU), ``magcache.py`` (MagCache at its authors'
Wan 2.1 settings, ``magcache-wan2.1``).
"""

from __future__ import annotations

from stitchkit.families.family import Family
from stitchkit.families.wan.forward import wan_forward
from stitchkit.families.wan.magcache import magcache_wan21
from stitchkit.hookspecs import hookimpl


def _is_pipeline(obj) -> bool:
    from diffusers import WanPipeline

    return isinstance(obj, WanPipeline)


def _is_transformer(obj) -> bool:
    from diffusers import WanTransformer3DModel

    return isinstance(obj, WanTransformer3DModel)


def _adapter(pipeline):
    from stitchkit.families.wan.adapter import WanAdapter

    return WanAdapter(pipeline)


def _masked_runner(transformer):
    from stitchkit.families.wan.masked import WanMaskedTransformer

    return WanMaskedTransformer(transformer)


def _random_inputs(transformer, *, latent_shape, text_tokens: int, batch: int, dtype, device, seed: int = 0):
    """Random inputs shaped as ``WanPipeline`` hands them over: latents ``(B, C, F, H, W)``, umT5 text
    ``(B, T, text_dim)``, one timestep per sample; no pooled text vector."""
    import torch

    from stitchkit.protocols import ModelInputs

    c = transformer.config
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, int(c["in_channels"]), *latent_shape, generator=g)
    text = torch.randn(batch, text_tokens, int(c["text_dim"]), generator=g)
    return ModelInputs(hidden_states=hidden.to(device=device, dtype=dtype),
                       timestep=torch.full((batch,), 500.0, device=device),
                       encoder_hidden_states=text.to(device=device, dtype=dtype))


def _check_pair(large, small) -> None:
    from stitchkit.families.wan.adapter import check_pair

    check_pair(large, small)


def _flops(config, num_tokens: int, text_tokens: int, *, mask_ratio: float = 1.0) -> float:
    from stitchkit.families.wan.flops import wan_transformer_flops

    return wan_transformer_flops(config, num_tokens, text_tokens, mask_ratio=mask_ratio)


def _load(large: str, small: str, *, torch_dtype=None, device=None, **kwargs):
    """The large ``WanPipeline`` (extra keyword arguments go to its ``from_pretrained``) and the small
    checkpoint's transformer only (with the loading options among them). The VAE stays float32 when
    ``vae`` is not passed, as Wan's model cards load it."""
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from stitchkit.families.loading import loading_options

    loading = loading_options(kwargs)
    if "vae" not in kwargs:
        kwargs["vae"] = AutoencoderKLWan.from_pretrained(large, subfolder="vae", torch_dtype=torch.float32,
                                                         **loading)
    large_pipe = WanPipeline.from_pretrained(large, torch_dtype=torch_dtype, **kwargs)
    small_tf = WanTransformer3DModel.from_pretrained(small, subfolder="transformer", torch_dtype=torch_dtype,
                                                     **loading)
    if device is not None:
        large_pipe.to(device)
        small_tf.to(device)
    return large_pipe, small_tf


FAMILY = Family(
    name="wan", accepts_pipeline=_is_pipeline, accepts_transformer=_is_transformer, adapter=_adapter,
    masked_runner=_masked_runner, forward=wan_forward, check_pair=_check_pair, flops=_flops, load=_load,
    random_inputs=_random_inputs, pipeline_class_names=("WanPipeline",),
    description="Wan 2.1 text-to-video (WanPipeline, WanTransformer3DModel)",
)


def _tiny_random():
    from stitchkit.families.wan.tiny_random import build_wan_tiny_random_pair

    return build_wan_tiny_random_pair()


@hookimpl
def register_model_families(register) -> None:
    register(FAMILY)


@hookimpl
def register_pairs(register) -> None:
    register("wan-tiny-random", _tiny_random, description="tiny random Wan 2.1 T2V pair: tests and smoke runs")


@hookimpl
def register_caches(register) -> None:
    """MagCache at its authors' settings for this family (``magcache.py``)."""

    register("magcache-wan2.1", magcache_wan21)
