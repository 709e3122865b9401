"""Pair checks shared by the families' ``check_pair``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stitchkit.errors import ConfigError


def check_matching_config(large_transformer: Any, small_transformer: Any, fields: Iterable[str]) -> None:
    """Refuse a pair whose transformer configs differ in one of ``fields``, naming it."""
    for field in fields:
        a, b = large_transformer.config.get(field), small_transformer.config.get(field)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise ConfigError(f"small.config.{field}", f"is {b}, the large model's is {a}", "the two must match")


def check_same_placement(large_transformer: Any, small_transformer: Any) -> None:
    """Refuse a pair whose transformers are in different dtypes or on different devices: a stitched step
    mixes their predictions."""
    large_param, small_param = next(large_transformer.parameters()), next(small_transformer.parameters())
    if small_param.dtype != large_param.dtype:
        raise ConfigError("small.dtype", f"is {small_param.dtype}, the large model's is {large_param.dtype}",
                          "load both in one dtype (torch_dtype=...) or call small.to(dtype)")
    if small_param.device != large_param.device:
        raise ConfigError("small.device", f"is {small_param.device}, the large model's is {large_param.device}",
                          "put both on one device with .to(device)")
