"""How many CPU threads torch uses, chosen per pair and set before any model runs.

torch's default (one OpenMP thread per core, spin-waiting between parallel regions) is right for large
models and badly wrong for tiny ones on a busy machine: a forward of the shapes pair's 3.5 M-parameter
transformer is a few hundred small kernels, each too short to split, and idle OpenMP threads spin against
whatever else the machine runs. Measured with ``benchmarks/threads.py`` (README, "Threads"): on 2 cores
the shapes pair was as fast or faster with one thread when quiet and several times faster under load,
while the 63 M-parameter ``bench-random`` pair gains from every core.

:func:`default_threads` turns that measurement into a rule on the large transformer's size;
:func:`apply_threads` sets it (``torch.set_num_threads``) and returns what it set, so that run records and
profile keys can name it. An explicit ``--threads N`` / ``pair.threads`` / ``OMP_NUM_THREADS`` wins.
"""

from __future__ import annotations

import os
import statistics

from stitchkit.errors import ConfigError

__all__ = ["SMALL_MODEL_PARAMS", "apply_threads", "passive_openmp", "default_threads", "machine_busy", "parse_threads",
           "timing_warnings"]

#: Below this many parameters in the large transformer a pair runs on one thread (see the module docstring).
SMALL_MODEL_PARAMS = 20_000_000


def passive_openmp() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy, when torch is not imported yet (OpenMP reads
    it once, at start-up); returns whether it is in effect. Idle OpenMP threads then sleep instead of
    spinning: under load, two spinning threads made a 63 M-parameter pair 5-9x slower than two passive ones
    (benchmarks/threads.py), while on a quiet machine the policy makes no measurable difference."""
    import sys

    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def default_threads(large, small=None) -> int:
    """One thread for a pair whose large transformer has fewer than :data:`SMALL_MODEL_PARAMS`
    parameters, else every core (``os.cpu_count()``); ``small`` is accepted for symmetry."""
    if _params(large) < SMALL_MODEL_PARAMS:
        return 1
    return os.cpu_count() or 1


def parse_threads(value, path: str = "--threads") -> int | None:
    """``None`` (choose per pair) or a positive int; anything else is one :class:`ConfigError` line."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(path, f"{value!r} is not a whole number", "give a thread count >= 1") from None
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise ConfigError(path, f"{value!r} is not a thread count", "give a whole number >= 1")
    return n


def apply_threads(requested: int | None, large=None, small=None, device: str = "cpu") -> int:
    """Set torch's CPU threads and return the number set (0 on a GPU device, where threads do not matter).

    ``requested`` wins; else ``OMP_NUM_THREADS`` if the user exported it; else :func:`default_threads`.
    """
    import torch

    if device != "cpu":
        return 0
    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            requested = int(env)
        elif large is not None:
            requested = default_threads(large, small)
        else:
            return torch.get_num_threads()
    if torch.get_num_threads() != requested:
        torch.set_num_threads(requested)
    return requested


def machine_busy(threads: int, *, cores: int | None = None) -> str | None:
    """A warning when the 1-minute load average says more work wanted the CPU than it has cores (load above
    ``cores + 0.5``: runnable work queued behind the timed run), else ``None``. ``threads`` is named in the
    warning: a run on every core suffers most from competition."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    cores = cores or os.cpu_count() or 1
    if load > cores + 0.5:
        return (f"the machine was busy (load {load:.1f} on {cores} cores, timed with {threads} thread(s)): "
                "timings are inflated and noisy; re-run them on a quiet machine")
    return None


def timing_warnings(records: dict[str, list[dict]], *, cores: int | None = None,
                    max_error_pct: float = 50.0) -> list[str]:
    """Warnings for a run's timing columns, from its unit records (``threads`` and ``load`` per unit, and the
    latency model's prediction): the machine was busy while some units ran, or predictions are far off (a
    noisy cached profile, the usual cause, is re-measured with ``stitchkit profile ... --refresh``)."""
    cores = cores or os.cpu_count() or 1
    units = [r for recs in records.values() for r in recs]
    lines = []
    busy = [r for r in units if r.get("load") is not None and r["load"] > cores + 0.5]
    if busy:
        worst = max(r["load"] for r in busy)
        lines.append(f"warning: {len(busy)} of {len(units)} images were timed while the machine was busy "
                     f"(load up to {worst:.1f} on {cores} cores): latency and speedup columns are inflated and "
                     "noisy; re-run on a quiet machine (quality columns are unaffected)")
    errors = [100.0 * abs(r["predicted_denoise_ms"] - r["denoise_ms"]) / r["denoise_ms"]
              for r in units if r.get("denoise_ms")]
    if errors and statistics.median(errors) > max_error_pct:
        lines.append(f"warning: the latency model misses the measured time by {statistics.median(errors):.0f} % "
                     "(median): the cached profile was probably measured under load; re-measure it with "
                     "`stitchkit profile --pair PAIR --height H --width W --refresh`")
    return lines
