"""Which experiments a run folder accepts: the one it ran, or one that grows it.

A researcher's run grows: a sixth method beside five finished ones, more prompts sampled from the same
file, another seed. Each unit's record already carries the key of what made it
(:mod:`~stitchkit.experiments.unit_keys`), so a grown experiment needs only its missing units generated.
What must not happen is a change of what an existing result *means*: a method of the same name with other
parameters, another sampler or pair, other metrics' settings. Those are refused with one line naming the
field, as before (:func:`stitchkit.experiments.run_folder.claim`).

The rules, over the two resolved configs (:func:`stitchkit.experiments.resolved.resolved`):

- ``methods``: every method of the run is still there, identical (matched by name, and for a sweep point by
  its grid point); new ones may be added anywhere;
- ``seeds``: every seed of the run is still there; new ones may be added;
- ``prompts``: a list keeps the run's prompts at their indices and may append; a sampled source
  (``{from: FILE, sample: N, ...}``) may raise ``sample`` (a larger sample contains a smaller one,
  :mod:`~stitchkit.experiments.prompts`) or drop it (the whole file); everything else stays;
- every other field is equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stitchkit.errors import ConfigError

#: The fields a run folder lets an experiment add to.
GROWABLE = ("methods", "prompts", "seeds")

_FIX = "rerun with --force-new for a new folder, or give --output"
_CHANGED_METHOD = ("a run folder takes new methods, prompts and seeds, not changes to finished ones: give the "
                   "changed method a new name, or rerun with --force-new for a new folder")


def short(value: Any, limit: int = 60) -> str:
    """A value for a one-line message, cut at ``limit`` characters."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


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


def growth_refusal(old: dict, new: dict, folder: Path) -> ConfigError | None:
    """Why the run folder ``folder``, which ran ``old``, cannot take ``new`` (``None``: it can)."""
    fixed_old = {k: v for k, v in old.items() if k not in GROWABLE}
    fixed_new = {k: v for k, v in new.items() if k not in GROWABLE}
    found = first_difference(fixed_old, fixed_new)
    if found is not None:
        return _differs(found, folder, _FIX)
    for check in (_methods, _seeds, _prompts):
        refusal = check(old, new, folder)
        if refusal is not None:
            return refusal
    return None


def _differs(found: tuple[str, Any, Any], folder: Path, allowed: str) -> ConfigError:
    field, old, new = found
    return ConfigError(field or "experiment", f"differs from the run in {folder} ({short(old)} there, "
                       f"{short(new)} now)", allowed)


def _method_id(entry: dict) -> str:
    """A method's identity in the resolved file: its name, and for a sweep point the point."""
    return json.dumps([entry.get("name"), entry.get("grid")], sort_keys=True, default=str)


def _methods(old: dict, new: dict, folder: Path) -> ConfigError | None:
    now = {_method_id(e): (i, e) for i, e in enumerate(new.get("methods", []))}
    for entry in old.get("methods", []):
        found = now.get(_method_id(entry))
        if found is None:
            return ConfigError("methods", f"{entry.get('name')!r} ran in {folder} and is missing now",
                               f"keep it in the experiment (a run folder grows, it never loses a method); {_FIX}")
        i, mine = found
        difference = first_difference(entry, mine, f"methods[{i}]")
        if difference is not None:
            return _differs(difference, folder, _CHANGED_METHOD)
    return None


def _seeds(old: dict, new: dict, folder: Path) -> ConfigError | None:
    missing = [s for s in old.get("seeds", []) if s not in set(new.get("seeds", []))]
    if missing:
        return ConfigError("seeds", f"seed {missing[0]} ran in {folder} and is missing now",
                           f"keep the run's seeds and add new ones; {_FIX}")
    return None


def _prompts(old: dict, new: dict, folder: Path) -> ConfigError | None:
    before, now = old.get("prompts"), new.get("prompts")
    if isinstance(before, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(before, now)):
            if a != b:
                return _differs((f"prompts[{i}]", a, b), folder, f"append new prompts after the run's; {_FIX}")
        if len(now) < len(before):
            return ConfigError("prompts", f"{len(before)} prompts ran in {folder}, {len(now)} now",
                               f"keep the run's prompts and append new ones; {_FIX}")
        return None
    if isinstance(before, dict) and isinstance(now, dict):
        # ``seed`` means something only beside ``sample`` (dropping ``sample`` takes the whole file).
        loose = {"sample"} | ({"seed"} if "sample" not in before or "sample" not in now else set())
        found = first_difference({k: v for k, v in before.items() if k not in loose},
                                 {k: v for k, v in now.items() if k not in loose}, "prompts")
        if found is not None:
            return _differs(found, folder, _FIX)
        old_n, new_n = before.get("sample"), now.get("sample")
        if old_n is None and new_n is not None or old_n is not None and new_n is not None and new_n < old_n:
            return ConfigError("prompts.sample", f"{old_n if old_n is not None else 'every prompt'} ran in "
                               f"{folder}, {new_n} now", f"sample at least as many (a larger sample contains "
                               f"a smaller one); {_FIX}")
        return None
    found = first_difference(before, now, "prompts")
    return None if found is None else _differs(found, folder, _FIX)
