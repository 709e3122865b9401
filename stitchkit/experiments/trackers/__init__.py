"""Trackers: a run's results table and pictures logged where researchers watch runs (TensorBoard, Weights &
Biases, MLflow), as plugins (``register_trackers``) like metrics. ``trackers: [tensorboard]`` in an
experiment; :func:`~stitchkit.experiments.trackers.log.log_report` is called by the report, on rank 0 only."""

from stitchkit.experiments.trackers.base import Tracker
from stitchkit.experiments.trackers.log import log_report, report_metrics

__all__ = ["Tracker", "log_report", "report_metrics"]
