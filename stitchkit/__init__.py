"""stitchkit: stitch a large and a small diffusion transformer inside one denoising loop.

The heavy parts (torch, diffusers) load on first use of ``StitchPipeline``, so ``import stitchkit`` stays
cheap for plugin modules that only need ``hookimpl`` and ``ConfigError``.
"""

from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["ConfigError", "NonFiniteError", "StitchOutput", "StitchPipeline", "hookimpl", "__version__"]


def __getattr__(name: str):
    if name in ("StitchPipeline", "StitchOutput"):
        from stitchkit import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'stitchkit' has no attribute {name!r}")
