"""The name ``stitchkit calibrate`` suggests for the method it prints: the method's name with the target it
was calibrated for, ``hybridstitch-30@1.5x``, ``hybridstitch-30@8steps`` or ``srdiffusion@=hybridstitch-30``.

Why: the printed line used to keep the method's own name, and a run folder refuses a finished method whose
thresholds changed (:mod:`stitchkit.experiments.growth`), so pasting it into the same experiment was always
refused. A new name is a new method: the folder grows by its units alone. ``--name`` still wins.
"""

from __future__ import annotations


def calibrated_name(method: str, *, target_speedup: float | None = None, target_large_steps: float | None = None,
                    match: str | None = None) -> str:
    if target_speedup is not None:
        return f"{method}@{target_speedup:g}x"
    if target_large_steps is not None:
        return f"{method}@{target_large_steps:g}steps"
    return f"{method}@={match}"
