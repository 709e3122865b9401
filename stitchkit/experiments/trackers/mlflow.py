"""MLflow, when ``mlflow`` is installed: one MLflow run per report under ``experiment`` (default: the
experiment's name) at ``tracking_uri`` (default: MLflow's own, ``./mlruns`` or ``MLFLOW_TRACKING_URI``).
MLflow keys allow letters, digits and ``_-. /`` only, so other characters of a method's name become ``_``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from stitchkit.experiments.trackers.base import require


def mlflow_key(tag: str) -> str:
    """``hybridstitch[mask_ratios=0.2]/speedup`` -> ``hybridstitch_mask_ratios_0.2_/speedup``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", tag)


class MlflowTracker:
    def __init__(self, experiment: str | None = None, tracking_uri: str | None = None) -> None:
        require("mlflow", "mlflow")
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self._mlflow: Any = None

    def start(self, *, run_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        import mlflow  # optional package, present (checked at construction)

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment or name)
        mlflow.start_run(run_name=name)
        self._mlflow = mlflow

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self._mlflow.log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step=step)

    def log_image(self, tag: str, image: Any, *, step: int) -> None:
        self._mlflow.log_image(image, f"{mlflow_key(tag)}.png")

    def log_text(self, tag: str, text: str, *, step: int) -> None:
        self._mlflow.log_text(text, f"{mlflow_key(tag)}.md")

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None
