"""Which units a rerun still has to generate, and what happens to a unit that fails.

A unit is done when its record exists, its key is the unit's key now
(:mod:`~stitchkit.experiments.unit_keys`: a record left by another configuration is stale and redone), its
image opens and, in a video run, its MP4 exists: a damaged image whose record is intact (a
disk error, a file truncated by hand) used to crash every rerun at the report; now its record is deleted and
the unit regenerated. (A changed config is refused first by
:func:`stitchkit.experiments.run_folder.claim`; the key catches what that file cannot see.)

A unit whose generation stops on NaN or inf (:class:`~stitchkit.errors.NonFiniteError`) does not end the
experiment: by default the run goes on with the other units, every finished unit is kept, the report is
written from them, and the run then ends with :class:`UnitsFailed` (the CLI: exit 1), naming method, prompt
index and seed of the first failure and the count. No record is written for a failed unit, so a rerun
retries it. A unit whose image or record cannot be written (an ``OSError``: disk full, quota, I/O error) is
handled the same way: named with its cause, the other units go on, and the rerun redoes it.
"""

from __future__ import annotations

from pathlib import Path

from stitchkit.errors import NonFiniteError
from stitchkit.experiments.store import image_path, is_video_run, read_record, record_path, video_path
from stitchkit.experiments.unit_keys import UnitKeys


def image_opens(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception:  # noqa: BLE001 - any failure to decode means the image must be made again
        return False
    return True


def pending_units(config, keys: UnitKeys | None = None) -> list:
    """The units without a current record: none, one whose key is not the unit's key now (stale), one whose
    image does not open, or in a video run (a folder with ``videos/``) one whose MP4 is missing. Changes
    nothing, so ``--dry-run`` counts exactly what :func:`units_to_do` will hand the run."""
    keys = UnitKeys(config) if keys is None else keys
    todo = []
    videos = is_video_run(config.output)
    for unit in config.units:
        method, pi, prompt, seed = unit
        record = record_path(config.output, method.name, pi, seed)
        found = read_record(record) if record.exists() else None
        if found is not None and keys.current(found, method.name, prompt, seed) \
                and image_opens(image_path(config.output, method.name, pi, seed)) \
                and (not videos or video_path(config.output, method.name, pi, seed).is_file()):
            continue
        todo.append(unit)
    return todo


def units_to_do(config, keys: UnitKeys | None = None) -> list:
    """:func:`pending_units`, their stale and orphaned records deleted (the run makes them again)."""
    todo = pending_units(config, keys)
    for method, pi, _, seed in todo:
        record_path(config.output, method.name, pi, seed).unlink(missing_ok=True)
    return todo


class UnitsFailed(NonFiniteError):
    """Some units stopped on NaN/inf or could not be written (an ``OSError``: disk full, quota, I/O); the
    others finished and are kept. A rerun retries the failed ones. ``failures``: ``(method, prompt index,
    seed, error)`` per failed unit, in the order they failed."""

    def __init__(self, failures: list[tuple[str, int, int, Exception]]) -> None:
        method, pi, seed, err = failures[0]
        more = f" (and {len(failures) - 1} more unit(s))" if len(failures) > 1 else ""
        RuntimeError.__init__(self, f"method {method!r}, prompt {pi}, seed {seed}: {cause(err)}{more}; the other "
                              "units finished and were kept; rerun to retry the failed ones")
        self.step, self.model = getattr(err, "step", None), getattr(err, "model", None)
        self.failures = failures


def cause(err: Exception) -> str:
    """What stopped a unit, in words: the NaN's step and model, or the file that could not be written."""
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        return f"could not write its outputs ({err.strerror or err}{':' if where else ''}{where}); no record written"
    return str(err)
