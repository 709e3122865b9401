"""The experiment after defaults, presets, prompt sampling and sweep expansion, as a plain mapping: what
``config.resolved.yaml`` holds (:mod:`.run_folder`) and what each unit's resume key hashes
(:mod:`.unit_keys`).
"""

from __future__ import annotations

from typing import Any

import attrs

from stitchkit.registry import PRESET_POLICY_KEYS, PRESET_SAMPLER_KEY


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
    registry = config.registry
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
