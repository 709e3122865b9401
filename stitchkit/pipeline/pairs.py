"""Model pairs by name, looked up in the plugin registry (the ``register_pairs`` hook): each family
registers its own (``tiny-random``, ``bench-random``, ``sd3-paper-random``, ``shapes``, ``wan-tiny-random``),
and an outside package adds more the same way. :meth:`StitchPipeline.from_pair` loads one; the functions
here are its older names. The shipped shapes pair's weights live in ``stitchkit/pairs/shapes``.
"""

from __future__ import annotations

from collections.abc import Sequence


class _PairNames(Sequence):
    """The registered pairs' names, in registration order, looked up on first use: building the registry
    imports the plugins (and torch), which ``import stitchkit.experiments.config`` should not pay for."""

    def _names(self) -> tuple[str, ...]:
        from stitchkit.registry import get_registry

        return tuple(get_registry().pairs)

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


#: Every registered pair's name (built-ins and outside plugins'), looked up when used.
BUILTIN_PAIRS: Sequence[str] = _PairNames()


def load_pair_pipeline(name: str, registry=None):
    """The ``StitchPipeline`` of a registered pair: :meth:`StitchPipeline.from_pair`, under its older name."""
    from stitchkit.pipeline.stitch_pipeline import StitchPipeline  # deferred: torch and diffusers

    return StitchPipeline.from_pair(name, registry=registry)


def load_pair_transformers(name: str, registry=None):
    """``(large, small, pair_id)``: the two transformers of a registered pair, for profiling."""
    pipe = load_pair_pipeline(name, registry=registry)
    return pipe.adapter.large_transformer, pipe.small, pipe.pair_id
