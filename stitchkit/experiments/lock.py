"""An advisory lock on a run folder, so that two runs into one folder do not both generate everything.

``fcntl.flock`` on ``<folder>/.lock``: the kernel drops the lock when its holder exits, however it exits
(kill -9 included), so a stale lock file never blocks a rerun. The file holds the holder's pid and host for
the refusal's message. Under ``torch.distributed`` only rank 0 takes it (the other ranks write into the
folder by design): :func:`lock_run_folder` is a small function meant to be called from the rank-0 branch.
On a system without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from stitchkit.errors import ConfigError

LOCK = ".lock"


class RunLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) lets the next run in."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_folder(folder: Path, path: str = "output") -> RunLock:
    """Take the folder's lock, or refuse with one line naming the run holding it (pid and host)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return RunLock(None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except ValueError:
            holder = {}
        handle.close()
        raise ConfigError(path, f"{folder} is in use by another run (pid {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')})", "wait for it to finish, or give another output folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    handle.flush()
    return RunLock(handle)
