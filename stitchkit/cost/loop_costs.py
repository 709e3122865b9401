"""Costs timed inside the denoising loop (``stitchkit calibrate --costs loop``).

Why: a profile (``stitchkit profile``) times the transformers alone, called back to back. On a small model
on a CPU per-call overhead dominates and a profile's masked/full ratio moves between quiet draws (0.35 and
0.50 for a 30 % mask on the shapes pair, with the loop's own steps at 0.55: README, the paper's tables); a
calibration priced with such a profile misses the measured speedup by what the profile missed (−15 % there).
The loop's trace times every model call of every step (``large_ms``, ``small_ms``) with the very clock a
measured run is judged by, so costs taken from it price the loop as it runs.

:func:`costs_from_traces` takes the medians: ``L_l`` over full large steps that ran alone, ``L_s`` over
steps where the small model ran, and ``L_l(M)`` (Eq. 8's refinement, :func:`stitchkit.cost.latency.masked_cost`)
per mask ratio seen. :func:`stitchkit.calibration.setup.prepare` feeds it, for every calibration unit, a
large-only run and a run of the method's stages with their transitions spread evenly over the steps, so
every ratio the method uses is timed, many times: on the shapes pair one run's masked/full ratio moves
between 0.40 and 0.56 from one unit to the next, on a quiet machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import Costs


def _fields(record) -> tuple[float, float, float, int]:
    row = record if isinstance(record, dict) else record.to_dict()
    return float(row["mask_ratio"]), float(row["large_ms"]), float(row["small_ms"]), int(row["small_tokens"])


def costs_from_traces(traces: Iterable[Iterable]) -> Costs:
    """``Costs(source="loop")`` from step records (:class:`stitchkit.loop.trace.StepRecord` or their dicts)."""
    full: list[float] = []
    small: list[float] = []
    masked: dict[float, list[float]] = {}
    for trace in traces:
        for record in trace:
            ratio, large_ms, small_ms, small_tokens = _fields(record)
            if small_tokens > 0:
                small.append(small_ms)
            if ratio >= 1.0 and small_tokens == 0:
                full.append(large_ms)
            elif 0.0 < ratio < 1.0:
                masked.setdefault(ratio, []).append(large_ms)
    if not full:
        raise ConfigError("--costs", "loop: no step of the large model alone was timed",
                          "record a large-only run with the traces, or use --costs profile")
    if not small:
        raise ConfigError("--costs", "loop: no step of the small model was timed",
                          "record a run that reaches the small model, or use --costs profile")
    return Costs(large_ms=statistics.median(full), small_ms=statistics.median(small),
                 masked_ms=[(ratio, statistics.median(ms)) for ratio, ms in masked.items()], source="loop")


def spread_transitions(num_steps: int, num_transitions: int) -> tuple[int, ...]:
    """Transitions that give each of ``num_transitions + 1`` stages an equal share of the steps (at
    least one step each), so a run with them times every stage."""
    if num_steps < num_transitions + 1:
        raise ConfigError("sampler.steps", f"{num_steps} steps cannot hold {num_transitions + 1} stages",
                          "use more steps, or --costs profile")
    return tuple(round(num_steps * (i + 1) / (num_transitions + 1)) for i in range(num_transitions))
