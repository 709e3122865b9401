"""The shipped shapes pair's files (``shapes/``: weights, configs, tokenizer, classifier), installed as package
data. Loading a registered pair by name lives with the pipeline (:mod:`stitchkit.pipeline.pairs`,
:meth:`stitchkit.StitchPipeline.from_pair`); the names below are kept as aliases of it for scripts written
against earlier releases.
"""

from stitchkit.pipeline.pairs import BUILTIN_PAIRS, load_pair_pipeline, load_pair_transformers

__all__ = ["BUILTIN_PAIRS", "load_pair_pipeline", "load_pair_transformers"]
