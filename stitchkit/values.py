"""Bounds on the sampler values a user gives, shared by the experiment YAML and ``StitchPipeline.__call__``.

Each check refuses a value that would be accepted and mean something else (issue 14):

- ``steps``: 1 to :data:`MAX_STEPS`. 0 used to fall back to the default silently; a huge count is a typo
  that would run for days.
- ``guidance_scale``: NaN and negative values are refused. ``0 <= g <= 1`` is accepted, as in diffusers,
  where it means *no classifier-free guidance* (one unguided pass, no negative prompt): a legitimate choice
  (distilled models, ablations), documented here and in the README rather than refused.
- ``seed``: 0 to ``2**63 - 1``. torch remaps a negative seed (``manual_seed(-1)`` is ``2**64 - 1``) and
  refuses a larger one only once the model is loaded.
"""

from __future__ import annotations

import math
from typing import Any

from stitchkit.errors import ConfigError

#: The most denoising steps accepted (the paper runs 50; DDPM's 1000 training steps are the natural ceiling).
MAX_STEPS = 1000
#: The largest seed torch's generator takes without remapping.
MAX_SEED = 2**63 - 1


def check_steps(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected int, got {value!r}")
    if value <= 0:
        raise ConfigError(path, f"must be positive, got {value}", f"give 1 to {MAX_STEPS} steps")
    if value > MAX_STEPS:
        raise ConfigError(path, f"is {value}, above the limit of {MAX_STEPS}", f"give 1 to {MAX_STEPS} steps")
    return value


def check_guidance(value: Any, path: str) -> float:
    """A guidance scale that means what it says; ``<= 1`` is accepted and turns guidance off (diffusers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"expected float, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(path, f"is {value}", "give a finite number (e.g. 4.0; 1.0 or less turns guidance off)")
    if value < 0:
        raise ConfigError(path, f"is negative ({value:g})",
                          "give 0 or more (e.g. 4.0; 1.0 or less turns guidance off)")
    return value


def check_seed(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected int, got {value!r}")
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(path, f"is {value}, outside 0 to 2**63-1", "give a non-negative seed below 2**63")
    return value
