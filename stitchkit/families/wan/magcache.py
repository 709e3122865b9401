"""MagCache at its authors' Wan 2.1 settings, as the ``magcache-wan2.1`` cache (registered by this family).

Zehong-Ma/MagCache df81cb1, ``MagCache4Wan2.1/magcache_generate.py:746-758``: the defaults of
``--magcache_thresh`` (0.12), ``--retention_ratio`` (0.2) and ``--magcache_K`` (2). The original keeps
separate accumulators and residuals for the conditional and the unconditional call (``:279-291``, indexed by
``cnt % 2``) with one ratio list per half, interleaved (``:910``; split as ``[0::2]`` conditional and
``[1::2]`` unconditional at ``:916-918``): ``separate_cfg=True`` with ``mag_ratios`` (conditional) and
``uncond_mag_ratios`` does the same. It stays off by default because it needs explicit ratios (stitchkit's
calibration records one joint list). One difference stays: its retention test is ``cnt >= int(num_steps * retention_ratio)`` (``:279``), diffusers' rounds
(``int(ratio * steps + 0.5)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from stitchkit.policies.caches import MagCache


def magcache_wan21(*, threshold: float = 0.12, max_skip_steps: int = 2, retention_ratio: float = 0.2,
                   mag_ratios: Sequence[float] | None = None, separate_cfg: bool = False,
                   uncond_mag_ratios: Sequence[float] | None = None) -> MagCache:
    """diffusers' MagCache with the authors' Wan 2.1 settings as its defaults."""
    return MagCache(threshold=threshold, max_skip_steps=max_skip_steps, retention_ratio=retention_ratio,
                    mag_ratios=mag_ratios, separate_cfg=separate_cfg, uncond_mag_ratios=uncond_mag_ratios)
