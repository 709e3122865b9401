"""Weights & Biases, when ``wandb`` is installed: one W&B run per report, ``project`` / ``entity`` / ``mode``
(``offline`` for a machine without network) as parameters; files under ``<run folder>/wandb/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from stitchkit.experiments.trackers.base import require


class WandbTracker:
    def __init__(self, project: str = "stitchkit", entity: str | None = None, mode: str | None = None) -> None:
        require("wandb", "wandb")
        self.project, self.entity, self.mode = project, entity, mode
        self._run: Any = None

    def start(self, *, run_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        import wandb  # optional package, present (checked at construction)

        self._run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, name=name,
                               dir=str(run_dir), config=dict(config), reinit=True)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def log_image(self, tag: str, image: Any, *, step: int) -> None:
        import wandb

        self._run.log({tag: wandb.Image(image)}, step=step)

    def log_text(self, tag: str, text: str, *, step: int) -> None:
        self._run.summary[tag] = text

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
