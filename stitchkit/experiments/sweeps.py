"""Sweeps: a method with ``grid: {param: [v1, v2], ...}`` becomes one method per point of the grid.

    methods:
      - {switch: hybridstitch, grid: {mask_ratios: [[0.2], [0.3]], thresholds: [[0.15, 0.05], [0.3, 0.1]]}}

expands to the Cartesian product, in the order the parameters and values are written, each point a method
of its own named ``<name>[param=value,...]`` — ``hybridstitch[mask_ratios=0.2,thresholds=0.15-0.05]`` (a list
value is its items joined by ``-``). The name depends only on the point, so it is stable across runs and
unique within the grid; the point's parameters become their own columns of results.csv.

A grid's size is checked before it is expanded: every point is a method whose policies are built and
checked, so a ``grid:`` of 1,000 × 1,000 values used to take 35 s and 1.1 GB just to load (issue 25). An
experiment holds at most :data:`MAX_METHODS` methods, sweep points included, unless its ``max_methods:``
field says more.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

from stitchkit.errors import ConfigError


def format_value(value: Any) -> str:
    """A parameter value as it appears in a method name: ``0.2``, ``0.15-0.05``, ``static``."""
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_name(base: str, point: Mapping[str, Any]) -> str:
    return base + "[" + ",".join(f"{k}={format_value(v)}" for k, v in point.items()) + "]"


#: The most methods (sweep points included) an experiment may hold unless its ``max_methods`` field says more.
MAX_METHODS = 1000


def expand_grid(grid: Any, path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The points of ``grid`` (``{param: [values]}``), Cartesian product in written order; refused before it
    is expanded when it has more than ``limit`` points."""
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(path, "expected a non-empty mapping {param: [v1, v2, ...]}",
                          "e.g. grid: {mask_ratios: [[0.2], [0.3]]}")
    names, values = [], []
    for name, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{path}.{name}", "expected a non-empty list of values", "e.g. [0.1, 0.2]")
        names.append(str(name))
        values.append(options)
    size = math.prod(len(options) for options in values)
    if limit is not None and size > limit:
        raise ConfigError(path, f"has {' × '.join(str(len(v)) for v in values)} = {size:,} points, more than the "
                          f"{limit:,} methods this experiment may still hold",
                          f"sweep fewer values, or raise max_methods (default {MAX_METHODS:,}) if you mean it")
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def switch_kind_and_params(switch: Any, path: str) -> tuple[str, dict[str, Any]]:
    """``"hybridstitch-30"`` or ``{kind: ..., **params}`` as (kind, params)."""
    if isinstance(switch, str):
        return switch, {}
    if isinstance(switch, Mapping) and isinstance(switch.get("kind"), str):
        params = dict(switch)
        return params.pop("kind"), params
    raise ConfigError(f"{path}.switch", "a sweep needs a switch policy name or {kind: ..., ...}")
