"""What a tracker plugin is: an object made by the factory a plugin registers through ``register_trackers``.

``factory(**params)`` (the YAML entry's parameters: ``{kind: wandb, project: P}``) returns an object with

- ``start(*, run_dir, name, config)``: once per report, before anything is logged (``config``: the resolved
  experiment as a plain mapping, for trackers that store a run's configuration);
- ``log_metrics(metrics, *, step)``: scalars keyed ``<method>/<column>`` (``hybridstitch-30/speedup``);
- ``log_image(tag, image, *, step)``: a PIL image (``grid``, ``frontier``, ``change``, ...);
- ``log_text(tag, text, *, step)``: the results table as Markdown;
- ``close()``: flush and release (called also when logging fails).

``step`` is the number of finished units the report covers, so a run that grows logs later points.
A factory refuses a tracker whose package is not installed with a :class:`~stitchkit.errors.ConfigError`
(the config reports it at ``trackers[i]``), before any image is generated.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from stitchkit.errors import ConfigError


@runtime_checkable
class Tracker(Protocol):
    def start(self, *, run_dir: Path, name: str, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None: ...

    def log_image(self, tag: str, image: Any, *, step: int) -> None: ...

    def log_text(self, tag: str, text: str, *, step: int) -> None: ...

    def close(self) -> None: ...


def require(module: str, install: str) -> None:
    """Refuse a tracker whose package is absent, naming the install command."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError("kind", f"needs the {module} package, which is not installed", f"pip install {install}")
