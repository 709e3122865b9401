"""The FLUX.1 family (``FluxPipeline``, ``FluxTransformer2DModel``: FLUX.1-dev with a same-architecture
smaller transformer such as Freepik's Flux.1 Lite 8B), registered through the same pluggy hooks an outside
package uses.

Files: ``latents.py`` (packing, position ids, token layout), ``adapter.py`` (the pipeline adapter, both
kinds of FLUX guidance), ``masked.py`` (the masked runner for double- and single-stream blocks, with its
K/V cache), ``flops.py`` (the FLOP model), ``tiny_random.py`` / ``paper_random.py`` (random-weight pairs
built offline from configs), ``magcache.py`` (MagCache at its authors' FLUX settings, ``magcache-flux``).

Loading real checkpoints (diffusers format; the small one needs only its ``transformer`` folder)::

    pipe = StitchPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", "Freepik/flux.1-lite-8B",
                                          torch_dtype=torch.bfloat16, device="cuda")
    out = pipe("a bird on a branch", guidance_scale=3.5, max_sequence_length=512, switch="hybridstitch-30")

FluxPipeline's defaults differ from StitchPipeline's (which follow SD3's): pass ``guidance_scale`` (3.5
there, the distilled guidance here too) and ``max_sequence_length`` (512 there) to get FluxPipeline's
behaviour; ``true_cfg_scale`` with a negative prompt turns on true CFG.
"""

from __future__ import annotations

from stitchkit.families.family import Family
from stitchkit.families.flux.magcache import magcache_flux
from stitchkit.hookspecs import hookimpl


def _is_pipeline(obj) -> bool:
    from diffusers import FluxPipeline

    return isinstance(obj, FluxPipeline)


def _is_transformer(obj) -> bool:
    from diffusers import FluxTransformer2DModel

    return isinstance(obj, FluxTransformer2DModel)


def _adapter(pipeline):
    from stitchkit.families.flux.adapter import FluxAdapter

    return FluxAdapter(pipeline)


def _masked_runner(transformer):
    from stitchkit.families.flux.masked import FluxMaskedTransformer

    return FluxMaskedTransformer(transformer)


def _forward(model, inputs):
    from stitchkit.families.flux.masked import flux_forward

    return flux_forward(model, inputs)


def _random_inputs(transformer, *, latent_shape, text_tokens: int, batch: int, dtype, device, seed: int = 0):
    """Random inputs shaped as the FLUX adapter hands them over: unpacked latents ``(B, in_channels / 4, H,
    W)``, T5 text ``(B, T, joint_attention_dim)``, the pooled CLIP vector, one timestep per sample and, for a
    guidance-distilled model, the guidance (3.5, FluxPipeline's default)."""
    import torch

    from stitchkit.protocols import ModelInputs

    c = transformer.config
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, int(c["in_channels"]) // 4, *latent_shape, generator=g)
    text = torch.randn(batch, text_tokens, int(c["joint_attention_dim"]), generator=g)
    pooled = torch.randn(batch, int(c["pooled_projection_dim"]), generator=g)
    guidance = torch.full((batch,), 3.5, device=device) if c["guidance_embeds"] else None
    return ModelInputs(hidden_states=hidden.to(device=device, dtype=dtype),
                       timestep=torch.full((batch,), 500.0, device=device),
                       encoder_hidden_states=text.to(device=device, dtype=dtype),
                       pooled_projections=pooled.to(device=device, dtype=dtype), guidance=guidance)


def _check_pair(large, small) -> None:
    from stitchkit.families.flux.adapter import check_pair

    check_pair(large, small)


def _flops(config, num_tokens: int, text_tokens: int, *, mask_ratio: float = 1.0) -> float:
    from stitchkit.families.flux.flops import flux_transformer_flops

    return flux_transformer_flops(config, num_tokens, text_tokens, mask_ratio=mask_ratio)


def _load(large: str, small: str, *, torch_dtype=None, device=None, **kwargs):
    """The large ``FluxPipeline`` (extra keyword arguments go to its ``from_pretrained``) and the small
    checkpoint's transformer only (``transformer/`` of a diffusers-format repository such as
    ``Freepik/flux.1-lite-8B``), with the loading options among them."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from stitchkit.families.loading import loading_options

    large_pipe = FluxPipeline.from_pretrained(large, torch_dtype=torch_dtype, **kwargs)
    small_tf = FluxTransformer2DModel.from_pretrained(small, subfolder="transformer", torch_dtype=torch_dtype,
                                                      **loading_options(kwargs))
    if device is not None:
        large_pipe.to(device)
        small_tf.to(device)
    return large_pipe, small_tf


FAMILY = Family(
    name="flux", accepts_pipeline=_is_pipeline, accepts_transformer=_is_transformer, adapter=_adapter,
    masked_runner=_masked_runner, forward=_forward, check_pair=_check_pair, flops=_flops, load=_load,
    random_inputs=_random_inputs, pipeline_class_names=("FluxPipeline",),
    description="FLUX.1 text-to-image (FluxPipeline, FluxTransformer2DModel)",
)


def _tiny_random():
    from stitchkit.families.flux.tiny_random import build_flux_tiny_random_pair

    return build_flux_tiny_random_pair()


def _paper_random():
    from stitchkit.families.flux.paper_random import build_flux_paper_random_pair

    return build_flux_paper_random_pair()


@hookimpl
def register_model_families(register) -> None:
    register(FAMILY)


@hookimpl
def register_pairs(register) -> None:
    register("flux-tiny-random", _tiny_random,
             description="tiny random FLUX.1 pair (2+2 / 1+1 blocks): tests and smoke runs")
    register("flux-paper-random", _paper_random,
             description="random FLUX.1-dev / Flux.1 Lite 8B at full scale (CUDA, latency only)")


@hookimpl
def register_caches(register) -> None:
    """MagCache at its authors' settings for this family (``magcache.py``)."""

    register("magcache-flux", magcache_flux)
