"""The shapes family: stitchkit's shipped CPU pair (two small transformers in pixel space sharing one tiny
CLIP text encoder, ``stitchkit/pairs/shapes``), registered through the same pluggy hooks as any family.

Its transformers are SD3's, so their masked runner is the SD3 family's; what is its own is the pipeline
side (``adapter.py``: encode with the shared encoder, pixel noise, decode by rescaling) and the trainer in
``stitchkit.shapes``.
"""

from __future__ import annotations

from pathlib import Path

from stitchkit.hookspecs import hookimpl
from stitchkit.families.family import Family


def _is_pipeline(obj) -> bool:
    from stitchkit.shapes.pair import ShapesPair

    return isinstance(obj, ShapesPair)


def _adapter(pair):
    from stitchkit.families.shapes.adapter import ShapesAdapter

    return ShapesAdapter(pair)


def _claims_folder(path: str) -> bool:
    """A shapes-pair folder holds both transformers (``transformer_large/``, ``transformer_small/``), or its
    ``pair.json`` shares the ones it lacks from another such folder (a rung of the ladder of pairs)."""
    from stitchkit.shapes.pair import is_pair_folder

    return is_pair_folder(path)


def _load(large: str, small: str, *, torch_dtype=None, device=None, **kwargs):
    import torch

    from stitchkit.errors import ConfigError
    from stitchkit.shapes.pair import load_shapes_pair

    if Path(small).resolve() != Path(large).resolve():
        raise ConfigError("small", "a shapes-pair folder holds both models", f"pass {large!r} twice")
    pair = load_shapes_pair(large, dtype=torch_dtype or torch.float32, device=device or "cpu")
    return pair, pair.small


def _transformer_family(method: str):
    """The transformers are SD3's: their runner, forward, pair check and FLOPs are that family's."""

    def call(*args, **kwargs):
        from stitchkit.families import sd3

        return getattr(sd3.FAMILY, method)(*args, **kwargs)

    return call


FAMILY = Family(
    name="shapes", accepts_pipeline=_is_pipeline, accepts_transformer=lambda _: False, adapter=_adapter,
    masked_runner=_transformer_family("masked_runner"), forward=_transformer_family("forward"),
    check_pair=_transformer_family("check_pair"), flops=_transformer_family("flops"), load=_load,
    claims_folder=_claims_folder, description="the shipped shapes pair (pixel space, CPU)",
)


def _shipped_pair(path=None):
    import torch

    from stitchkit.shapes.pair import load_shapes_pair

    pair = load_shapes_pair(path, dtype=torch.float32, device="cpu")
    return pair, pair.small


def _pair_1x160():
    from stitchkit.shapes.pair import SHIPPED_PAIRS

    return _shipped_pair(SHIPPED_PAIRS["shapes-1x160"])


@hookimpl
def register_model_families(register) -> None:
    register(FAMILY)


@hookimpl
def register_pairs(register) -> None:
    register("shapes", _shipped_pair, description="the trained CPU pair, for quality")
    register("shapes-1x160", _pair_1x160,
             description="the shipped large with the stronger 1x160 small (the ladder's second rung)")
