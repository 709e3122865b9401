"""Settings that would mean nothing for the method they are given to, refused instead of run as another method.

A method is a switch policy plus, optionally, a mask policy and caches. Some combinations are accepted by
every part alone and yet cannot act (issue 25):

- a ``mask`` on a switch policy that never takes a hybrid step (``may_mask = False``, or ``mask_ratios``
  empty): the mask is never asked, so the run is the switch policy alone under the mask's name;
- a cache on a model the switch policy never runs (``cache: {small: ...}`` with ``switch: large``): the hooks
  are attached and removed and nothing is cached.

Which models a policy runs comes from its optional ``stages`` (:class:`stitchkit.protocols.SwitchPolicy`):
``"large"`` and ``"ras"`` stages run the large model, ``"small"`` the small one, ``"hybrid"`` both. A policy
without ``stages``, or with a stage name not listed here, is not checked (nothing is refused on a guess).
The same check serves the YAML (:mod:`stitchkit.experiments.config`, paths ``methods[i].mask``) and the
Python API (:meth:`stitchkit.pipeline.StitchPipeline.__call__`, paths ``mask``, ``cache.small``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stitchkit.errors import ConfigError
from stitchkit.loop.caches import normalize_cache_spec

__all__ = ["STAGE_MODELS", "cache_paths", "check_method", "models_run", "uses_mask"]

#: The models a stage of each name runs.
STAGE_MODELS: dict[str, frozenset[str]] = {
    "large": frozenset({"large"}),
    "ras": frozenset({"large"}),  # the large model on the masked tokens, the previous prediction elsewhere
    "small": frozenset({"small"}),
    "hybrid": frozenset({"large", "small"}),
}


def models_run(switch: Any) -> frozenset[str] | None:
    """The models ``switch`` can run at some step, from its ``stages``; ``None`` when it does not say."""
    stages = getattr(switch, "stages", None)
    if not isinstance(stages, (tuple, list)) or not stages:
        return None
    runs: set[str] = set()
    for stage in stages:
        if stage not in STAGE_MODELS:
            return None
        runs |= STAGE_MODELS[stage]
    return frozenset(runs)


def cache_paths(cache: Any, path: str = "cache") -> dict[str, str]:
    """Each cached model's role and the path of its spec in ``cache=`` (``cache`` or ``cache.<role>``)."""
    per_role = isinstance(cache, Mapping) and "kind" not in cache
    return {role: f"{path}.{role}" if per_role else path for role in normalize_cache_spec(cache, path)}


def uses_mask(switch: Any) -> bool:
    """Whether ``switch`` may take a hybrid (masked) step, so that a mask policy means something to it."""
    return not (getattr(switch, "may_mask", True) is False
                or (hasattr(switch, "mask_ratios") and not switch.mask_ratios))


def check_method(switch: Any, *, mask: Any = None, cache_roles: Mapping[str, str] | None = None,
                 prefix: str = "") -> None:
    """Refuse a ``mask`` the switch policy never asks for and a cache on a model it never runs.

    ``mask``: the mask the user named (``None``: none, or a preset's own); ``cache_roles``: each cached
    model's role (``"large"``, ``"small"``) and the path of its spec; ``prefix``: put before ``mask``."""
    name = type(switch).__name__
    if mask is not None and not uses_mask(switch):
        raise ConfigError(f"{prefix}mask", f"{name} never runs a hybrid (masked) step, so a mask policy would be "
                          "ignored", "remove mask: or use a switch policy with mask_ratios")
    runs = models_run(switch)
    if runs is None:
        return
    for role, path in (cache_roles or {}).items():
        if role not in runs:
            other = next(iter(runs)) if len(runs) == 1 else None
            raise ConfigError(path, f"{name} never runs the {role} model, so this cache would do nothing",
                              f"remove it{f', or cache the {other} model' if other else ''}")
