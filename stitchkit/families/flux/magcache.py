"""MagCache at its authors' FLUX settings, as the ``magcache-flux`` cache (registered by this family).

Zehong-Ma/MagCache df81cb1, ``MagCache4FLUX/magcache_flux.py:466-468``: ``K = 5``,
``magcache_thresh = 0.24``, ``retention_ratio = 0.1`` (its retention test, ``:327``, is diffusers').
"""

from __future__ import annotations

from collections.abc import Sequence

from stitchkit.policies.caches import MagCache


def magcache_flux(*, threshold: float = 0.24, max_skip_steps: int = 5, retention_ratio: float = 0.1,
                  mag_ratios: Sequence[float] | None = None) -> MagCache:
    """diffusers' MagCache with the authors' FLUX settings as its defaults."""
    return MagCache(threshold=threshold, max_skip_steps=max_skip_steps, retention_ratio=retention_ratio,
                    mag_ratios=mag_ratios)
