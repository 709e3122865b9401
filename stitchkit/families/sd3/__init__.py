"""The Stable Diffusion 3 family (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``: SD3 Medium, SD3.5
Large and Medium) and its built-in pairs, registered through the same pluggy hooks an outside package uses.

Files: ``adapter.py`` (the pipeline adapter), ``masked.py`` (the masked runner with its K/V cache),
``tiny_random.py`` / ``paper_random.py`` (random-weight pairs built offline from configs).
"""

from __future__ import annotations

from stitchkit.hookspecs import hookimpl
from stitchkit.families.family import Family


def _is_pipeline(obj) -> bool:
    from diffusers import StableDiffusion3Pipeline

    return isinstance(obj, StableDiffusion3Pipeline)


def _is_transformer(obj) -> bool:
    from diffusers import SD3Transformer2DModel

    return isinstance(obj, SD3Transformer2DModel)


def _adapter(pipeline):
    from stitchkit.families.sd3.adapter import SD3Adapter

    return SD3Adapter(pipeline)


def _masked_runner(transformer):
    from stitchkit.families.sd3.masked import MaskedTransformer

    return MaskedTransformer(transformer)


def _forward(model, inputs):
    from stitchkit.families.sd3.masked import plain_forward

    return plain_forward(model, inputs)


def _check_pair(large, small) -> None:
    from stitchkit.families.sd3.adapter import check_pair

    check_pair(large, small)


def _flops(config, num_tokens: int, text_tokens: int, *, mask_ratio: float = 1.0) -> float:
    from stitchkit.models.flops import transformer_flops

    return transformer_flops(config, num_tokens, text_tokens, mask_ratio=mask_ratio)


def _load(large: str, small: str, *, torch_dtype=None, device=None, **kwargs):
    """The large pipeline (extra keyword arguments go to its ``from_pretrained``: ``text_encoder_3=None`` runs
    without T5) and the small checkpoint's transformer only (with the loading options among them)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from stitchkit.families.loading import loading_options

    large_pipe = StableDiffusion3Pipeline.from_pretrained(large, torch_dtype=torch_dtype, **kwargs)
    small_tf = SD3Transformer2DModel.from_pretrained(small, subfolder="transformer", torch_dtype=torch_dtype,
                                                     **loading_options(kwargs))
    if device is not None:
        large_pipe.to(device)
        small_tf.to(device)
    return large_pipe, small_tf


FAMILY = Family(
    name="sd3", accepts_pipeline=_is_pipeline, accepts_transformer=_is_transformer, adapter=_adapter,
    masked_runner=_masked_runner, forward=_forward, check_pair=_check_pair, flops=_flops, load=_load,
    pipeline_class_names=("StableDiffusion3Pipeline",),
    description="Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline, SD3Transformer2DModel)",
)


def _tiny_random():
    from stitchkit.families.sd3.tiny_random import build_tiny_random_pair

    return build_tiny_random_pair()


def _bench_random():
    from stitchkit.families.sd3.tiny_random import build_bench_random_pair

    return build_bench_random_pair()


def _paper_random():
    from stitchkit.families.sd3.paper_random import build_paper_random_pair

    return build_paper_random_pair()


@hookimpl
def register_model_families(register) -> None:
    register(FAMILY)


@hookimpl
def register_pairs(register) -> None:
    register("tiny-random", _tiny_random, description="tiny random SD3 pair: structure tests and smoke runs")
    register("bench-random", _bench_random,
             description="benchmark-sized random SD3 transformers around the tiny encoders (CPU latency checks)")
    register("sd3-paper-random", _paper_random,
             description="random SD3.5 Large / SD3 Medium at the paper's scale (CUDA, latency only)")
