"""What a run folder says about itself: ``config.resolved.yaml`` and ``environment.json``.

``config.resolved.yaml`` is the experiment after defaults, presets, prompt sampling and sweep expansion,
written as an experiment file: ``stitchkit run config.resolved.yaml`` reproduces the run. A rerun into a
folder whose resolved config differs is refused with one line naming the first differing field — results
of two configurations must never mix — unless ``--force-new`` sends it to a fresh folder (``NAME-2``, ...);
an experiment that only adds methods, prompts or seeds grows the folder (:mod:`.growth`).
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
from stitchkit.experiments.growth import growth_refusal
from stitchkit.experiments.resolved import resolved
from stitchkit.experiments.store import atomic_write

RESOLVED = "config.resolved.yaml"
ENVIRONMENT = "environment.json"


def claimed(config, *, force_new: bool = False):
    """The config to run, its ``output`` moved to a fresh folder with ``force_new`` when the folder holds a
    run this config does not grow (:mod:`~stitchkit.experiments.growth`); refused otherwise. Writes nothing:
    ``--dry-run`` checks exactly what ``run`` will check."""
    mine = resolved(config)
    out = Path(config.output)
    refusal = _refusal(out, mine)
    if refusal is not None:
        if not force_new:
            raise refusal
        n = 2
        while _refusal(out.with_name(f"{out.name}-{n}"), mine) is not None:
            n += 1
        config = attrs.evolve(config, output=out.with_name(f"{out.name}-{n}"))
    return config


def claim(config, *, force_new: bool = False):
    """Check the run folder against this config (:func:`claimed`) and write config.resolved.yaml, rewritten
    when the experiment grew the run; returns the config to run."""
    config = claimed(config, force_new=force_new)
    path = Path(config.output) / RESOLVED
    header = ("# The experiment as it ran: defaults, presets, prompt sampling and sweeps filled in.\n"
              "# `stitchkit run` on this file reproduces the run (into this folder).\n")
    body = yaml.safe_dump({**resolved(config), "output": "."}, sort_keys=False, allow_unicode=True, width=110)
    if not path.exists() or path.read_text() != header + body:
        atomic_write(path, (header + body).encode())
    return config


def _refusal(folder: Path, mine: dict) -> ConfigError | None:
    path = folder / RESOLVED
    if not path.exists():
        return None
    theirs = yaml.safe_load(path.read_text()) or {}
    theirs.pop("output", None)
    return growth_refusal(theirs, mine, folder)


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
