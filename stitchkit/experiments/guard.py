"""What wraps every run: the preflight checks, then the run folder's lock (rank 0 only).

A decorator so that :func:`stitchkit.experiments.runner.run_experiment` carries it in one line, apart from
the body the data-parallel work edits. The lock is taken on the folder the config names (before
``claim``, so that writing ``config.resolved.yaml`` is serialised too) and released however the run ends.
Under ``torch.distributed`` only rank 0 takes it: the other ranks write into the same folder by design.
"""

from __future__ import annotations

import functools
from pathlib import Path

from stitchkit.experiments.distributed import world_from_env
from stitchkit.experiments.lock import lock_run_folder
from stitchkit.experiments.preflight import preflight


def _is_rank0() -> bool:
    world = world_from_env()
    return world is None or world.is_main


def guarded_run(run):
    """``run(config, ...)`` after :func:`preflight`, holding the output folder's lock (rank 0)."""

    @functools.wraps(run)
    def wrapper(config, *args, **kwargs):
        preflight(config)
        if not _is_rank0():
            return run(config, *args, **kwargs)
        with lock_run_folder(Path(config.output)):
            return run(config, *args, **kwargs)

    return wrapper
