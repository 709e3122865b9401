"""The report's numbers and pictures handed to every tracker of the experiment (rank 0 only: the report is
written there alone). A tracker that fails is named in one warning line; the run's files are already
written, so its results are never lost to a logging service."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
from PIL import Image

from stitchkit.experiments.resolved import resolved

logger = logging.getLogger(__name__)

#: The numeric columns of results.md logged per method (the metrics' columns are logged too).
LOGGED_COLUMNS = ("latency_ms", "denoise_ms", "speedup", "large_step_equivalents", "mean_abs_diff",
                  "predicted_denoise_ms", "prediction_error_pct")


def report_metrics(rows: Iterable[Any], quality: Mapping[str, Mapping[str, float | None]]) -> dict[str, float]:
    """``{"<method>/<column>": value}`` of every number of the results table (``None`` cells left out)."""
    out: dict[str, float] = {}
    for row in rows:
        values = {**{k: v for k, v in attrs.asdict(row).items() if k in LOGGED_COLUMNS},
                  **quality.get(row.method, {})}
        out.update({f"{row.method}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))})
    return out


def log_report(config, *, rows: list, quality: Mapping[str, Mapping[str, Any]], pictures: Iterable[Path]) -> None:
    """Log the results table's metrics, the table itself and the pictures to each of ``config.trackers``."""
    if not getattr(config, "trackers", ()):
        return
    metrics = report_metrics(rows, quality)
    step = sum(row.images for row in rows)  # finished units: a run that grows logs a later point
    table = (Path(config.output) / "results.md").read_text()
    pictures = [p for p in pictures if p.suffix == ".png" and p.exists()]
    for i, spec in enumerate(config.trackers):
        tracker, _ = config.registry.create("tracker", spec.spec, path=f"trackers[{i}]")
        try:
            tracker.start(run_dir=Path(config.output), name=config.name, config=resolved(config))
            tracker.log_metrics(metrics, step=step)
            tracker.log_text("results", table, step=step)
            for path in pictures:
                with Image.open(path) as image:
                    tracker.log_image(path.stem, image, step=step)
            logger.info("logged %d metrics and %d pictures to %s", len(metrics), len(pictures), spec.kind)
        except Exception as err:  # noqa: BLE001 - a logging service must not fail a finished run
            warnings.warn(f"trackers[{i}] ({spec.kind}): could not log the report ({err}); the run folder has "
                          "every result", stacklevel=2)
        finally:
            tracker.close()
