"""Model pairs by name, looked up in the plugin registry (the ``register_pairs`` hook): each family
registers its own (``tiny-random``, ``bench-random``, ``sd3-paper-random``, ``shapes``, ``wan-tiny-random``),
and an outside package adds more the same way. This folder also holds the shipped shapes pair's weights.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "BUILTIN_PAIRS":  # computed on use, so pairs of outside plugins count too
        from stitchkit.registry import get_registry

        return tuple(get_registry().pairs)
    raise AttributeError(f"module 'stitchkit.pairs' has no attribute {name!r}")


def load_pair_pipeline(name: str, registry=None):
    """The ``StitchPipeline`` of a registered pair."""
    from stitchkit.pipeline import StitchPipeline
    from stitchkit.registry import get_registry

    registry = registry or get_registry()
    large, small = registry.pair(name).loader()
    return StitchPipeline.from_pipelines(large=large, small=small, registry=registry, pair_id=name)


def load_pair_transformers(name: str):
    """``(large, small, pair_id)``: the two transformers of a built-in pair, for profiling."""
    pipe = load_pair_pipeline(name)
    return pipe.adapter.large_transformer, pipe.small, pipe.pair_id
