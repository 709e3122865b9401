"""The run folder's layout: where a unit's image and record live, and how files are written.

Its own module so that the runner, the reports and the pictures all read one layout and none of them
imports another (the runner used to import the pictures and the pictures the runner).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from stitchkit.experiments.unit_keys import UnitKeys


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """:func:`atomic_write` of ``chunks`` written one by one (a long run's trace.jsonl is never one string)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``export_to_video``); on
    success it gets the usual permissions and replaces ``path``, on failure it is removed. ``suffix`` ends
    the temporary name (a writer may pick its format by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no read-only call before Python 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unit_stem(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index:04d}-s{seed}"


def record_path(out_dir: Path, method: str, prompt_index: int, seed: int) -> Path:
    return out_dir / "records" / method / f"{unit_stem(prompt_index, seed)}.json"


def image_path(out_dir: Path, method: str, prompt_index: int, seed: int) -> Path:
    return out_dir / "images" / method / f"{unit_stem(prompt_index, seed)}.png"


def video_path(out_dir: Path, method: str, prompt_index: int, seed: int) -> Path:
    """A video unit's MP4 (its image, :func:`image_path`, is then the frame strip)."""
    return out_dir / "videos" / method / f"{unit_stem(prompt_index, seed)}.mp4"


def is_video_run(out_dir: Path) -> bool:
    """Does the run folder hold a video pair's units (MP4s under ``videos/``)? A folder is one pair's."""
    return (out_dir / "videos").is_dir()


def read_record(path: Path) -> dict | None:
    """A record's content, or ``None`` when it is missing or does not parse."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def current_records(config, stale: list | None = None, methods=None,
                    unreadable: list | None = None) -> Iterator[tuple[str, dict]]:
    """``(method name, record)`` of every unit whose record is current (its key is the unit's key now:
    :mod:`~stitchkit.experiments.unit_keys`), read from disk one at a time, in method, prompt and seed
    order (of ``methods``, default every method). The unit ``(method, prompt index, seed)`` of each stale
    record is appended to ``stale``; that of a record that does not parse (truncated, damaged) to
    ``unreadable`` when given (else to ``stale``), so that it is not reported as another configuration's."""

    keys = UnitKeys(config)
    for method in config.methods if methods is None else methods:
        for pi, prompt in zip(config.prompt_indices, config.prompts):
            for seed in config.seeds:
                path = record_path(config.output, method.name, pi, seed)
                if not path.exists():
                    continue
                record = read_record(path)
                if record is not None and keys.current(record, method.name, prompt, seed):
                    yield method.name, record
                elif record is None and unreadable is not None:
                    unreadable.append((method.name, pi, seed))
                elif stale is not None:
                    stale.append((method.name, pi, seed))


def load_records(config) -> dict[str, list[dict]]:
    """Each method's finished units (current records, whole), in prompt and seed order."""
    records: dict[str, list[dict]] = {m.name: [] for m in config.methods}
    for method, record in current_records(config):
        records[method].append(record)
    return records


def first_switch_step(trace: list[dict]) -> int | None:
    """The first step whose stage differs from step 0's (``None``: the unit never switched)."""
    return next((r["step"] for r in trace if r["stage"] != trace[0]["stage"]), None)


def compact(record: dict) -> dict:
    """A record as the reports read it: its scalar fields and, from its trace, ``first_switch_step``,
    ``change`` (D_t per step, NaN where none, an ``array('d')``) and ``num_tokens``; no trace, no masks, so
    a long run's records are never all in memory whole."""
    from array import array

    slim = {k: v for k, v in record.items() if k not in ("trace", "masks")}
    trace = record.get("trace") or []
    slim["first_switch_step"] = first_switch_step(trace) if trace else None
    slim["change"] = array("d", (float("nan") if r["change"] is None else r["change"] for r in trace))
    slim["num_tokens"] = trace[0]["num_tokens"] if trace else None
    return slim


def compact_records(config, stale: list | None = None, unreadable: list | None = None) -> dict[str, list[dict]]:
    """:func:`load_records` in :func:`compact` form, each record read and reduced before the next."""
    records: dict[str, list[dict]] = {m.name: [] for m in config.methods}
    for method, record in current_records(config, stale, unreadable=unreadable):
        records[method].append(compact(record))
    return records


def trace_lines(config) -> Iterator[bytes]:
    """trace.jsonl's lines (one per unit and step), read from the current records one record at a time."""
    for method, record in current_records(config):
        for step in record["trace"]:
            yield (json.dumps({"method": method, "prompt_index": record["prompt_index"],
                               "seed": record["seed"], **step}) + "\n").encode()
