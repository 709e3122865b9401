"""TensorBoard through torch's own writer (``torch.utils.tensorboard.SummaryWriter``), which needs the
``tensorboard`` package to write event files (``pip install "stitchkit[tensorboard]"``). Events go to
``<run folder>/tensorboard/`` unless ``log_dir`` says otherwise: ``tensorboard --logdir runs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from stitchkit.experiments.trackers.base import require


class TensorBoardTracker:
    def __init__(self, log_dir: str | None = None) -> None:
        require("tensorboard", '"stitchkit[tensorboard]" (or tensorboard)')
        self.log_dir = log_dir
        self._writer: Any = None

    def start(self, *, run_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy: imports tensorboard on first use

        self._writer = SummaryWriter(log_dir=str(Path(self.log_dir) if self.log_dir else run_dir / "tensorboard"))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_image(self, tag: str, image: Any, *, step: int) -> None:
        import numpy as np

        self._writer.add_image(tag, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC")

    def log_text(self, tag: str, text: str, *, step: int) -> None:
        self._writer.add_text(tag, text, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
