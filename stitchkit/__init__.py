"""stitchkit: stitch a large and a small diffusion transformer inside one denoising loop."""

from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["ConfigError", "NonFiniteError", "hookimpl", "__version__"]
