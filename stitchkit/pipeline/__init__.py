"""The pipeline face: :class:`StitchPipeline` (:mod:`.stitch_pipeline`), diffusers' call conventions it
honours or refuses (:mod:`.conventions`), loading a registered pair by name (:mod:`.pairs`), batches of
experiment units (:mod:`.units`), video outputs (:mod:`.video`) and MagCache's calibrated ratios on disk
(:mod:`.magcache_ratios`).

``StitchPipeline`` and ``StitchOutput`` load on first use (torch and diffusers are heavy), so importing
:mod:`stitchkit.pipeline.pairs` for the pairs' names stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stitchkit.pipeline.stitch_pipeline import StitchOutput, StitchPipeline

__all__ = ["StitchOutput", "StitchPipeline"]


def __getattr__(name: str):
    if name in __all__:
        from stitchkit.pipeline import stitch_pipeline  # deferred: torch and diffusers load here

        return getattr(stitch_pipeline, name)
    raise AttributeError(f"module 'stitchkit.pipeline' has no attribute {name!r}")
