"""Built-in model pairs, by name: ``tiny-random`` (structure tests and smoke runs), ``bench-random``
(benchmark-sized random transformers, for latency checks on a CPU) and ``shapes`` (the trained CPU pair,
for quality). Each name maps to a loader of a ``StitchPipeline``."""

from __future__ import annotations

BUILTIN_PAIRS = ("tiny-random", "bench-random", "shapes", "sd3-paper-random")


def load_pair_pipeline(name: str):
    """The ``StitchPipeline`` of a built-in pair."""
    from stitchkit.errors import ConfigError
    from stitchkit.pipeline import StitchPipeline

    if name == "tiny-random":
        from stitchkit.pairs.tiny_random import build_tiny_random_pair

        large, small = build_tiny_random_pair()
        return StitchPipeline.from_pipelines(large=large, small=small, pair_id=name)
    if name == "bench-random":
        from stitchkit.pairs.tiny_random import build_bench_random_pair

        large, small = build_bench_random_pair()
        return StitchPipeline.from_pipelines(large=large, small=small, pair_id=name)
    if name == "sd3-paper-random":
        from stitchkit.pairs.paper_random import build_paper_random_pair

        large, small = build_paper_random_pair()
        return StitchPipeline.from_pipelines(large=large, small=small, pair_id=name)
    if name == "shapes":
        return StitchPipeline.from_shapes()
    raise ConfigError("pair", f"unknown built-in pair {name!r}", "known: " + ", ".join(BUILTIN_PAIRS))


def load_pair_transformers(name: str):
    """``(large, small, pair_id)``: the two transformers of a built-in pair, for profiling."""
    pipe = load_pair_pipeline(name)
    return pipe.adapter.large_transformer, pipe.small, pipe.pair_id
