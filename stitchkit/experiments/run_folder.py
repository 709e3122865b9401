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
from stitchkit.experiments.store import atomic_write

RESOLVED = "config.resolved.yaml"
ENVIRONMENT = "environment.json"


def resolved(config) -> dict[str, Any]:
    """The experiment as a plain mapping, every default filled in (what config.resolved.yaml holds)."""
    pair = config.pair
    if pair.name is not None:
        pair_data: Any = pair.name
    else:
        pair_data = {"large": pair.large, "small": pair.small, "dtype": pair.dtype, "device": pair.device}
    if config.prompt_source is not None:
        prompts: Any = dict(config.prompt_source)
    else:
        prompts = list(config.prompts)
    from stitchkit.registry import get_registry

    registry = get_registry()
    methods = []
    for m in config.methods:
        switch, implied = _explicit(registry, "switch", m.switch)
        entry: dict[str, Any] = {"name": m.name, "switch": switch}
        if m.sweep_of is not None:  # a one-point grid, so that the point's parameters keep their columns
            entry = {"name": m.sweep_of, "switch": {k: v for k, v in switch.items() if k not in m.params},
                     "grid": {k: [_plain(v)] for k, v in m.params.items()}}
        for key in ("mask", "context"):
            spec = getattr(m, key) if getattr(m, key) is not None else implied.get(key)
            if spec is not None:
                entry[key] = _explicit(registry, key, spec)[0]
        if m.cache is not None:
            entry["cache"] = _plain(m.cache)
        methods.append(entry)
    return {
        "name": config.name,
        "pair": pair_data,
        # Threads change timings, never images (same seed, same bits at 1 and 2 threads): not a config field.
        # num_frames only when given: an image run's resolved file is what it always was.
        "sampler": {k: v for k, v in attrs.asdict(config.sampler).items()
                    if k != "threads" and not (k == "num_frames" and v is None)},
        "prompts": prompts,
        "seeds": list(config.seeds),
        "metrics": [{"kind": m.kind, **_plain(m.params)} for m in config.metrics],
        "methods": methods,
        "allow_unprofitable": config.allow_unprofitable,
    }


def _explicit(registry, kind: str, spec: Any) -> tuple[Any, dict[str, Any]]:
    """A policy spec with its preset expanded and every default written out: ``hybridstitch-30`` becomes
    ``{kind: hybridstitch, thresholds: [0.5, 0.3], mask_ratios: [0.3], ...}`` (and the mask/context the
    preset implies), so the resolved file does not depend on what a preset means in this version."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif hasattr(spec, "items") and isinstance(spec.get("kind"), str):
        params = dict(spec)
        name = params.pop("kind")
    else:
        return _plain(spec), {}
    entry = registry.entry(kind, name)
    from stitchkit.registry import PRESET_POLICY_KEYS, PRESET_SAMPLER_KEY

    # A preset's sampler settings are not a policy parameter: the experiment's sampler says what runs.
    merged = {**dict(entry.parameters()), **{k: v for k, v in entry.params.items() if k != PRESET_SAMPLER_KEY},
              **params}
    implied = {k: merged.pop(k) for k in PRESET_POLICY_KEYS if k in merged}
    return {"kind": entry.preset_of or name, **_plain(merged)}, implied


def _plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
