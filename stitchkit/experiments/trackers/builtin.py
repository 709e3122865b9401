"""The built-in trackers, registered through ``register_trackers`` like an outside plugin's. Importing this
module is cheap: each tracker imports its package when it starts."""

from __future__ import annotations

from stitchkit.experiments.trackers.mlflow import MlflowTracker
from stitchkit.experiments.trackers.tensorboard import TensorBoardTracker
from stitchkit.experiments.trackers.wandb import WandbTracker
from stitchkit.hookspecs import hookimpl


@hookimpl
def register_trackers(register) -> None:
    register("tensorboard", TensorBoardTracker)
    register("wandb", WandbTracker)
    register("mlflow", MlflowTracker)
