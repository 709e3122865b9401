"""What a run folder says about itself: ``config.resolved.yaml`` and ``environment.json``.

``config.resolved.yaml`` is the experiment after defaults, presets, prompt sampling and sweep expansion,
written as an experiment file: ``stitchkit run config.resolved.yaml`` reproduces the run. A rerun into a
folder whose resolved config differs is refused with one line naming the first differing field — results
of two configurations must never mix — unless ``--force-new`` sends it to a fresh folder (``NAME-2``, ...).
``environment.json``: stitchkit, torch, diffusers, transformers versions, device, dtype, threads, the git
commit of the stitchkit source when there is one.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import yaml

from stitchkit.errors import ConfigError
from stitchkit.experiments.resolved import resolved
from stitchkit.experiments.store import atomic_write

RESOLVED = "config.resolved.yaml"
ENVIRONMENT = "environment.json"


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The path of the first field where two resolved configs differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where, old.get(key, "(absent)"), new.get(key, "(absent)")
            found = first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        if len(old) != len(new):
            return f"{path} (length)", len(old), len(new)
        return None
    return None if old == new else (path, old, new)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def claim(config, *, force_new: bool = False):
    """Check the run folder against this config and write config.resolved.yaml; returns the config to run
    (its ``output`` moved to a fresh folder with ``force_new`` when the folder holds another config)."""
    mine = resolved(config)
    out = Path(config.output)
    found = _differs(out, mine)
    if found is not None:
        if not force_new:
            field, old, new = found
            raise ConfigError(field or "experiment", f"differs from the run in {out} ({_short(old)} there, "
                              f"{_short(new)} now)", "rerun with --force-new for a new folder, or give --output")
        n = 2
        while _differs(out.with_name(f"{out.name}-{n}"), mine) is not None:
            n += 1
        config = attrs.evolve(config, output=out.with_name(f"{out.name}-{n}"))
    path = Path(config.output) / RESOLVED
    if not path.exists():
        header = ("# The experiment as it ran: defaults, presets, prompt sampling and sweeps filled in.\n"
                  "# `stitchkit run` on this file reproduces the run (into this folder).\n")
        body = yaml.safe_dump({**mine, "output": "."}, sort_keys=False, allow_unicode=True, width=110)
        atomic_write(path, (header + body).encode())
    return config


def _differs(folder: Path, mine: dict) -> tuple[str, Any, Any] | None:
    path = folder / RESOLVED
    if not path.exists():
        return None
    theirs = yaml.safe_load(path.read_text()) or {}
    theirs.pop("output", None)
    return first_difference(theirs, mine)


def git_commit() -> str | None:
    """The commit of the stitchkit source tree, when it is a git checkout."""
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def environment(config) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    device = config.pair.device if config.pair.name is None else "cpu"
    return {
        "stitchkit": version("stitchkit"), "torch": torch.__version__, "diffusers": version("diffusers"),
        "transformers": version("transformers"), "torchmetrics": version("torchmetrics"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "device": device, "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor(),
        "dtype": config.pair.dtype, "threads": torch.get_num_threads(), "git_commit": git_commit(),
    }


def write_environment(config, *, world_size: int = 1) -> Path:
    """environment.json; ``world_size``: the data-parallel processes the run was started with."""
    path = Path(config.output) / ENVIRONMENT
    data = {**environment(config), "world_size": world_size}
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return path
