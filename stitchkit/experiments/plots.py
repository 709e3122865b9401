"""The run's plots, drawn with matplotlib from its records and results (rebuilt by ``stitchkit report``).

* ``frontier.png``: speedup against each quality metric, one point per method, the Pareto front drawn
  (the paper's Fig. 6);
* ``switch_steps.png``: per adaptive method, a histogram of the first step where it left its first stage
  (the paper's Fig. 8: where D_t fell below the first threshold);
* ``change.png``: each method's own change measure per step (D_t of Eq. 9 on x0 for HybridStitch,
  the rule's measure for SRDiffusion: the same step reads 1.25 on x0 and 0.59 on another), the median and
  the 10th–90th percentile band over the units, with the thresholds it compares against and its median
  first switch step.

Steps are integers on every axis; every picture says in its title what it leaves out.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from stitchkit.experiments.columns import COLUMNS, human_header
from stitchkit.experiments.reliability import unreliable
from stitchkit.experiments.plan import is_fixed_schedule
from stitchkit.experiments.store import atomic_write

DPI = 110


def _figure(nrows: int, ncols: int, width: float, height: float, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (speedup higher; metric by its direction),
    sorted by speedup."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and sign * y2 >= sign * y) and (x2 > x or sign * y2 > sign * y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def write_frontier(config, rows, quality: dict[str, dict], metrics: dict[str, Any]) -> Path | None:
    """frontier.png: one panel per quality metric (else mean |image − large|), speedup on x."""

    panels = [(name, human_header(m.label, m.unit, m.higher_is_better), m.higher_is_better)
              for name, m in metrics.items()]
    values = {r.method: {**quality.get(r.method, {}), "mean_abs_diff": r.mean_abs_diff} for r in rows}
    if not panels:
        panels = [("mean_abs_diff", human_header(*COLUMNS["mean_abs_diff"]), False)]
    speed = {r.method: r.speedup for r in rows if r.speedup is not None}
    panels = [p for p in panels if any(values[m].get(p[0]) is not None for m in speed)]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = _figure(nrows, cols, 5.6 * cols, 4.4 * nrows)
    images = min((r.images for r in rows), default=0)
    for ax, (name, label, higher) in zip(axes.flat, panels):
        methods = [m for m in speed if values[m].get(name) is not None and math.isfinite(values[m][name])]
        points = [(speed[m], values[m][name]) for m in methods]
        warning = unreliable(metrics.get(name), images)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:gray" if warning else "tab:blue",
                   zorder=3)
        for i, (m, (x, y)) in enumerate(zip(methods, points)):  # names, alternating sides against overlap
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 == 0 else -10), fontsize=8)
        if warning is None:
            front = pareto_front(points, bool(higher))
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", lw=1.2,
                    zorder=2, label="Pareto front")
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("speedup vs large-only (×) →")
        ax.set_ylabel(label)
        ax.set_title(label.rstrip(" ↑↓") + (f"\n{warning}: no front drawn" if warning else ""),
                     fontsize=10, color="tab:red" if warning else "black")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    left_out = [r.method for r in rows if r.method not in speed]
    fig.suptitle(f"{config.name}: speed against quality, one point per method "
                 f"({len(config.prompts)} prompts × {len(config.seeds)} seeds)"
                 + (f"\nnot drawn (no speedup: no large-only units of the same prompts): {', '.join(left_out)}"
                    if left_out else ""))
    fig.tight_layout()
    return _save(fig, config.output / "frontier.png")


def write_switch_steps(config, records: dict[str, list[dict]], adaptive: set[str]) -> Path | None:
    """switch_steps.png: a histogram of the first switch step of each adaptive method's units."""
    steps = config.sampler.steps
    data = {m: [r["first_switch_step"] for r in recs] for m, recs in records.items()
            if m in adaptive and recs}
    if not data:
        return None
    fig, axes = _figure(len(data), 1, 7.0, 1.6 * len(data) + 0.8, sharex=True)
    bins = np.arange(-0.5, steps + 0.5, 1.0)
    for ax, (method, firsts) in zip(axes.flat, data.items()):
        switched = [s for s in firsts if s is not None]
        ax.hist(switched, bins=bins, color="tab:blue", edgecolor="white")
        never = len(firsts) - len(switched)
        median = f", median {np.median(switched):g}" if switched else ""
        ax.set_title(f"{method}: {len(switched)} of {len(firsts)} images switched{median}"
                     + (f"; {never} never" if never else ""), fontsize=9, loc="left")
        ax.set_ylabel("images")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[-1].xaxis.get_major_locator().set_params(integer=True)
    axes.flat[-1].set_xlabel(f"first switch step (the first stage ended), of {steps} steps")
    fig.suptitle(f"{config.name}: where the adaptive methods left their first stage")
    fig.tight_layout()
    return _save(fig, config.output / "switch_steps.png")


def _change_series(records: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Per method, its units' change per step as rows of a ``(units, steps)`` array (NaN: no value)."""
    series = {}
    for method, recs in records.items():
        table = [rec["change"] for rec in recs if len(rec["change"])]
        if not table:
            continue
        length = max(len(t) for t in table)
        values = np.full((len(table), length), np.nan)
        for i, t in enumerate(table):
            values[i, :len(t)] = np.frombuffer(t, dtype=np.float64)
        if np.isfinite(values).any():
            series[method] = values
    return series


def _policy_marks(config, method: str) -> tuple[str, tuple[float, ...], str]:
    """``(measure, thresholds drawn as levels, a note)`` of ``method``'s switch policy: a HybridStitch-like
    policy compares D_t with ``thresholds`` (levels); SRDiffusion's rules other than ``paper`` compare a
    drop of tanh(D_t) with ``threshold``, which is no level of the curve (named in the note instead)."""
    spec = next((m.switch for m in config.methods if m.name == method), None)
    try:
        policy, _ = config.registry.create("switch", spec)
    except Exception:  # noqa: BLE001 - a plot never fails a report; the curve is drawn without marks
        return "x0", (), ""
    measure = str(getattr(policy, "change_measure", "x0"))
    thresholds = tuple(float(t) for t in (getattr(policy, "thresholds", None) or ()))
    threshold, rule = getattr(policy, "threshold", None), getattr(policy, "rule", None)
    if threshold is not None and rule in (None, "paper"):
        thresholds = (float(threshold),)
    note = "" if threshold is None or rule in (None, "paper") else \
        f"threshold {threshold:g} on a drop of tanh(change), not a level"
    return measure, thresholds, note


def write_change(config, records: dict[str, list[dict]]) -> Path | None:
    """change.png: each method's change measure per step (median and 10th-90th percentile band over its
    units), its thresholds and its median first switch step."""
    from matplotlib.ticker import MaxNLocator

    series = _change_series(records)
    if not series:
        return None
    cols = min(3, len(series))
    nrows = math.ceil(len(series) / cols)
    fig, axes = _figure(nrows, cols, 4.6 * cols, 3.3 * nrows, sharex=True)
    for ax, (method, values) in zip(axes.flat, series.items()):
        measure, thresholds, note = _policy_marks(config, method)
        steps = np.arange(values.shape[1])
        valid = np.isfinite(values).any(axis=0)
        with np.errstate(all="ignore"):
            lo, mid, hi = (np.nanpercentile(values[:, valid], q, axis=0) for q in (10, 50, 90))
        ax.fill_between(steps[valid], lo, hi, color="tab:blue", alpha=0.25, label="10th–90th percentile")
        ax.plot(steps[valid], mid, color="tab:blue", lw=1.5, label="median")
        for i, level in enumerate(thresholds):
            ax.axhline(level, color="tab:orange", lw=1, ls="--", label="thresholds" if i == 0 else None)
        firsts = [r["first_switch_step"] for r in records.get(method, []) if r.get("first_switch_step") is not None]
        if firsts:
            ax.axvline(float(np.median(firsts)), color="tab:red", lw=1, ls=":", label="median first switch")
        eq = " (Eq. 9)" if measure == "x0" else ""
        ax.set_title(f"{method}: {measure}{eq}" + (f"\n{note}" if note else ""), fontsize=9)
        ax.set_ylabel(f"change, {measure} (log)")
        ax.set_yscale("log")  # the change falls by orders of magnitude; a log axis shows where thresholds bite
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    for i, ax in enumerate(list(axes.flat)[:len(series)]):
        if i + cols >= len(series):  # nothing drawn below it: it carries the step axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("step")
    left_out = [m.name for m in config.methods if m.name not in series]
    fig.suptitle(f"{config.name}: change between consecutive steps, each method's own measure, over "
                 f"{len(config.prompts)} prompts" + (f"\nnot drawn (no change recorded): {', '.join(left_out)}"
                                                    if left_out else ""))
    fig.tight_layout()
    return _save(fig, config.output / "change.png")


def adaptive_methods(config, records: dict[str, list[dict]]) -> set[str]:
    """Methods whose switch policy reads D_t: driven without any D_t, it does not visit every stage."""
    registry = config.registry
    out = set()
    for method in config.methods:
        recs = records.get(method.name)
        if not recs or recs[0]["num_tokens"] is None:
            continue
        policy, _ = registry.create("switch", method.switch)
        if not is_fixed_schedule(policy, config.sampler.steps, recs[0]["num_tokens"]):
            out.add(method.name)
    return out


def write_plots(config, records: dict[str, list[dict]], rows, quality, metrics) -> list[Path]:
    """frontier.png, switch_steps.png and change.png; ``records`` in the reports' compact form
    (:func:`stitchkit.experiments.store.compact`)."""
    written = [write_frontier(config, rows, quality, metrics),
               write_switch_steps(config, records, adaptive_methods(config, records)),
               write_change(config, records)]
    return [p for p in written if p is not None]
