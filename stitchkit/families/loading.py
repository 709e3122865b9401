"""Loading options shared by the families' ``load``: the ones that apply to every checkpoint a pair reads."""

from __future__ import annotations

from typing import Any, Mapping

#: ``from_pretrained`` options that go to the small checkpoint too (the rest are the large pipeline's).
LOADING_OPTIONS = ("local_files_only", "revision", "cache_dir", "token", "variant", "use_safetensors")


def loading_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The loading options among ``kwargs``."""
    return {k: v for k, v in kwargs.items() if k in LOADING_OPTIONS}
