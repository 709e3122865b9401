"""Which units a rerun still has to generate, and what happens to a unit that fails.

A unit is done when its record exists **and** its image opens (and, in a video run, its MP4 exists): a damaged image whose record is intact (a
disk error, a file truncated by hand) used to crash every rerun at the report; now its record is deleted and
the unit regenerated. (What the record's content must match is the run folder's business: a changed
config is refused by :func:`stitchkit.experiments.run_folder.claim`.)

A unit whose generation stops on NaN or inf (:class:`~stitchkit.errors.NonFiniteError`) does not end the
experiment: by default the run goes on with the other units, every finished unit is kept, the report is
written from them, and the run then ends with :class:`UnitsFailed` (the CLI: exit 1), naming method, prompt
index and seed of the first failure and the count. No record is written for a failed unit, so a rerun
retries it.
"""

from __future__ import annotations

from pathlib import Path

from stitchkit.errors import NonFiniteError
from stitchkit.experiments.store import image_path, is_video_run, record_path, video_path


def image_opens(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception:  # noqa: BLE001 - any failure to decode means the image must be made again
        return False
    return True


def units_to_do(config) -> list:
    """The units without a record or whose image does not open, or in a video run (a folder with
    ``videos/``) whose MP4 is missing (their stale records are deleted)."""
    todo = []
    videos = is_video_run(config.output)
    for unit in config.units:
        method, pi, _, seed = unit
        record = record_path(config.output, method.name, pi, seed)
        if record.exists() and image_opens(image_path(config.output, method.name, pi, seed)) \
                and (not videos or video_path(config.output, method.name, pi, seed).is_file()):
            continue
        record.unlink(missing_ok=True)
        todo.append(unit)
    return todo


class UnitsFailed(NonFiniteError):
    """Some units stopped on NaN/inf; the others finished and are kept. A rerun retries the failed ones."""

    def __init__(self, failures: list[tuple[str, int, int, NonFiniteError]]) -> None:
        method, pi, seed, err = failures[0]
        more = f" (and {len(failures) - 1} more unit(s))" if len(failures) > 1 else ""
        RuntimeError.__init__(self, f"method {method!r}, prompt {pi}, seed {seed}: {err}{more}; the other units "
                              "finished and were kept; rerun to retry the failed ones")
        self.step, self.model = err.step, err.model
        self.failures = failures
