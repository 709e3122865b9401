"""MagCache's magnitude ratios on disk: one calibration generation per pair, model role, schedule length and
latent size, stored under ``$STITCHKIT_CACHE/magcache`` (next to the latency profiles,
:func:`stitchkit.cost.profile.profile_dir`) so that later runs skip it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from stitchkit.cost.profile import profile_dir


def magcache_dir() -> Path:
    """``magcache`` beside the latency profiles (``$STITCHKIT_CACHE/magcache`` when that is set)."""
    return profile_dir().parent / "magcache"


def magcache_key(*, pair_id: str, role: str, model: torch.nn.Module, num_steps: int, num_tokens: int,
                 guided: bool) -> str:
    """A file name for the ratios of ``role`` of the pair at this length and size: the ratios depend on the
    weights (named by the pair and the model's config), the schedule length and the latent size."""
    config = json.dumps({k: v for k, v in dict(model.config).items() if not k.startswith("_")}, sort_keys=True,
                        default=str)
    digest = hashlib.sha256(f"{pair_id}|{role}|{config}|{num_steps}|{num_tokens}|{guided}".encode()).hexdigest()
    return f"{role}-{num_steps}steps-{num_tokens}tokens-{digest[:16]}.json"


def load_ratios(key: str) -> tuple[float, ...] | None:
    path = magcache_dir() / key
    try:
        return tuple(float(x) for x in json.loads(path.read_text())["mag_ratios"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_ratios(key: str, ratios: list[float], **about: Any) -> Path:
    path = magcache_dir() / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"mag_ratios": list(ratios), **about}, indent=1))
    tmp.replace(path)
    return path
