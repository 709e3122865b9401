"""The resume key of a unit: a hash of everything that determines its output.

A record counts for a unit only when the key it stores equals the unit's key now: a hash of the method's
resolved parameters (presets expanded, every default written out: what ``config.resolved.yaml`` holds for
it), the sampler, the pair, the prompt's text and the seed. The run folder's ``claim`` already refuses a
config that differs from the folder's ``config.resolved.yaml``, but some changes never reach that file: a
prompts file edited in place (the file holds the source, ``{from: prompts.txt}``, not the texts), or records
left in the folder by another run whose ``config.resolved.yaml`` was removed (a method of the same name with
other parameters). The key catches these: such a record is stale, never counted, and its unit is made again.

Threads and the device's index (``cuda:1`` on rank 1) are left out: they change timings, not images.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from stitchkit.experiments.resolved import resolved

#: The field of a record holding its key.
FIELD = "key"


def key_bases(config) -> dict[str, str]:
    """Per method name, the canonical text of what every unit of that method shares."""
    data = resolved(config)
    pair: Any = data["pair"]
    if isinstance(pair, dict):
        pair = {**pair, "device": str(pair["device"]).split(":")[0]}
    common = {"pair": pair, "sampler": data["sampler"]}
    return {method.name: json.dumps({**common, "method": entry}, sort_keys=True, default=str)
            for method, entry in zip(config.methods, data["methods"])}


def unit_key(base: str, prompt: str, seed: int) -> str:
    """The key of one unit of the method whose :func:`key_bases` entry is ``base``."""
    text = json.dumps([base, prompt, seed], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class UnitKeys:
    """The keys of an experiment's units: ``keys(method name, prompt, seed)``."""

    def __init__(self, config) -> None:
        self._bases = key_bases(config)

    def __call__(self, method: str, prompt: str, seed: int) -> str:
        return unit_key(self._bases[method], prompt, seed)

    def current(self, record: dict, method: str, prompt: str, seed: int) -> bool:
        """Whether ``record`` was written for this unit as the experiment now defines it."""
        return record.get(FIELD) == self(method, prompt, seed)
