"""Method names are folder names (``images/<method>/``, ``records/<method>/``): checked as such.

A name is refused when it is empty, holds a character outside :data:`SAFE` (a ``/`` would write elsewhere),
contains ``..``, or equals another method's name after normalisation: names are compared case-folded,
because on a case-insensitive filesystem (macOS, Windows) ``Large`` and ``large`` share one folder and one
method's records would overwrite the other's. Sweep point names such as
``hybridstitch[mask_ratios=0.2,thresholds=0.15-0.05]`` stay valid.
"""

from __future__ import annotations

import re

from stitchkit.errors import ConfigError

#: Letters, digits and ``-_.[]=,+@`` (``@``: calibrated copies, ``hybridstitch-30@1.5x``).
SAFE = re.compile(r"[A-Za-z0-9_.\-\[\]=,+@]+")
WHAT_TO_DO = "use letters, digits and -_.[]=,+@ only"


def check_name(name: str, path: str) -> str:
    if not name:
        raise ConfigError(path, "is empty", "give the method a name (" + WHAT_TO_DO + ")")
    if not SAFE.fullmatch(name):
        bad = sorted({c for c in name if not SAFE.fullmatch(c)})
        raise ConfigError(path, f"{name!r} has characters a folder name must not have ({''.join(bad)!r})",
                          WHAT_TO_DO)
    if ".." in name or name == ".":
        raise ConfigError(path, f"{name!r} contains '..' or is '.'", "a method name must not walk the folders")
    return name


def normalised(name: str) -> str:
    """The key two names must not share: case-folded (case-insensitive filesystems)."""
    return name.casefold()
