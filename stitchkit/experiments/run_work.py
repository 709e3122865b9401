"""What ``stitchkit run`` will do, found by the checks it makes before it loads a model.

``--dry-run`` used to count a unit "done" when its record file existed, skipped the preflight and the run
folder's check, and so promised "96 units (80 already done)" for a run that then refused, or regenerated
records written for other prompts. :func:`run_work` is the sequence the runner itself goes through before it
loads the pair — :func:`~stitchkit.experiments.preflight.preflight`, the run folder's
:func:`~stitchkit.experiments.run_folder.claimed` (with ``--force-new``'s new folder) and the per-unit
resume keys (:func:`~stitchkit.experiments.resume.pending_units`) — without writing anything, so what it
refuses ``run`` refuses and the units it counts are the units ``run`` generates.
"""

from __future__ import annotations

import os

import attrs

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.preflight import preflight
from stitchkit.experiments.resume import pending_units
from stitchkit.experiments.run_folder import claimed


@attrs.frozen(kw_only=True)
class RunWork:
    """An experiment's units and those a run will generate; ``config.output`` is where they will go."""

    config: ExperimentConfig
    todo: tuple

    @property
    def total(self) -> int:
        return len(self.config.units)

    def describe(self) -> str:
        """``96 units: 16 to generate, 80 already done in runs/x`` or ``nothing to generate: ...``."""
        where = os.path.normpath(self.config.output)
        if not self.todo:
            return f"nothing to generate: all {self.total} units are done in {where}"
        return f"{self.total} units: {len(self.todo)} to generate, {self.total - len(self.todo)} already done in {where}"


def run_work(config: ExperimentConfig, *, force_new: bool = False) -> RunWork:
    """The runner's checks before it loads a model, then the units it will generate; writes nothing."""
    preflight(config, create=False)
    config = claimed(config, force_new=force_new)
    return RunWork(config=config, todo=tuple(pending_units(config)))
