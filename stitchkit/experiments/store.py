"""The run folder's layout: where a unit's image and record live, and how files are written.

Its own module so that the runner, the reports and the pictures all read one layout and none of them
imports another (the runner used to import the pictures and the pictures the runner).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """:func:`atomic_write` of ``chunks`` written one by one (a long run's trace.jsonl is never one string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
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


def load_records(config) -> dict[str, list[dict]]:
    """Each method's finished units (a unit is done when its record exists), in prompt and seed order."""
    records = {}
    for method in config.methods:
        paths = (record_path(config.output, method.name, pi, seed)
                 for pi in config.prompt_indices for seed in config.seeds)
        records[method.name] = [json.loads(path.read_text()) for path in paths if path.exists()]
    return records


def trace_lines(config) -> Iterator[bytes]:
    """trace.jsonl's lines (one per unit and step), read from the records on disk one record at a time."""
    for method in config.methods:
        for pi in config.prompt_indices:
            for seed in config.seeds:
                path = record_path(config.output, method.name, pi, seed)
                if not path.exists():
                    continue
                record = json.loads(path.read_text())
                for step in record["trace"]:
                    yield (json.dumps({"method": method.name, "prompt_index": record["prompt_index"],
                                       "seed": record["seed"], **step}) + "\n").encode()
