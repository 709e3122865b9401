"""Checks of one field of an experiment file, shared by the config and the prompt sources: each returns the
value (a float field takes an int) or raises one :class:`ConfigError` line carrying the field's path."""

from __future__ import annotations

from typing import Any, Mapping

from stitchkit.errors import ConfigError

__all__ = ["list_of", "mapping", "only", "positive", "typed"]


def mapping(value: Any, path: str, allowed: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path or "experiment", f"expected a mapping, got {type(value).__name__}", allowed)
    return value


def list_of(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list, got {type(value).__name__}", "write it as a YAML list")
    return value


def only(data: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, "unknown key", "allowed: " + ", ".join(allowed))


def typed(value: Any, path: str, kind: type) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(path, f"expected {kind.__name__}, got {value!r}")
    return value


def positive(value: Any, path: str, kind: type) -> Any:
    value = typed(value, path, kind)
    if value <= 0:
        raise ConfigError(path, f"must be positive, got {value}")
    return value
