"""The reports of a run, rebuilt from its records and images alone (``stitchkit report RUN_DIR``).

``results.md`` / ``results.csv``: one row per method, the paper's Table 1 columns (latency, speedup, each
quality metric) plus large-step equivalents and the latency model's prediction and its error. The CSV keeps
machine names (``latency_ms``); the Markdown table has human headers with units and an arrow saying which
way is better. Then the pictures (:mod:`~stitchkit.experiments.pictures`) and plots
(:mod:`~stitchkit.experiments.plots`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from stitchkit.experiments.columns import COLUMNS, DIGITS, human_header
from stitchkit.experiments.config import BASELINE, ExperimentConfig
from stitchkit.experiments.metrics.scoring import build_metrics, score_methods
from stitchkit.experiments.pictures import write_pictures
from stitchkit.experiments.plots import write_plots
from stitchkit.experiments.reliability import reliability_notes
from stitchkit.experiments.store import (
    atomic_write,
    atomic_write_chunks,
    compact_records,
    image_path,
    trace_lines,
)
from stitchkit.experiments.sweeps import format_value
from stitchkit.experiments.trackers.log import log_report


def _image(out_dir: Path, method: str, prompt_index: int, seed: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(image_path(out_dir, method, prompt_index, seed)).convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


@attrs.frozen(kw_only=True)
class ResultRow:
    method: str
    images: int
    latency_ms: float
    denoise_ms: float
    speedup: float | None
    large_step_equivalents: float
    mean_abs_diff: float | None
    predicted_denoise_ms: float
    prediction_error_pct: float
    sampler: str = "–"


def collect_results(config: ExperimentConfig, records: dict[str, list[dict]]) -> list[ResultRow]:
    """One row per method, from its records: mean latency, speedup over the large-only run of the same
    prompts and seeds, large-model step equivalents (Σ large_tokens / N), mean |image − large image|."""
    out_dir = config.output
    base = {(r["prompt_index"], r["seed"]): r for r in records.get(BASELINE, [])}
    rows = []
    for method in config.methods:
        recs = records.get(method.name, [])
        if not recs:
            continue
        paired = [r for r in recs if (r["prompt_index"], r["seed"]) in base]
        measured = statistics.fmean(r["denoise_ms"] for r in recs)
        predicted = statistics.fmean(r["predicted_denoise_ms"] for r in recs)
        speedup = diff = None
        if paired:
            speedup = (sum(base[(r["prompt_index"], r["seed"])]["latency_ms"] for r in paired)
                       / sum(r["latency_ms"] for r in paired))
            diff = statistics.fmean(
                float(np.abs(_image(out_dir, method.name, r["prompt_index"], r["seed"])
                             - _image(out_dir, BASELINE, r["prompt_index"], r["seed"])).mean())
                for r in paired)
        rows.append(ResultRow(
            method=method.name, images=len(recs), latency_ms=statistics.fmean(r["latency_ms"] for r in recs),
            denoise_ms=measured, speedup=speedup,
            large_step_equivalents=statistics.fmean(r["large_step_equivalents"] for r in recs),
            mean_abs_diff=diff, predicted_denoise_ms=predicted,
            prediction_error_pct=100.0 * (predicted - measured) / measured,
            sampler=" / ".join(sorted({sampler_label(r.get("sampler")) for r in recs})),
        ))
    return rows


def sampler_label(sampler: dict[str, Any] | None) -> str:
    """``20 steps 64x64 cfg 3`` (a results row's ``sampler`` cell; ``32x48 9 frames`` for videos)."""
    if not sampler:
        return "–"
    frames = f" {sampler['num_frames']} frames" if sampler.get("num_frames") else ""  # a video: frames too
    return (f"{sampler['steps']} steps {sampler['height']}x{sampler['width']}{frames} "
            f"cfg {sampler['guidance_scale']:g}")


def markdown_row(cells: list[str]) -> str:
    """One row of a Markdown table, ``|`` inside a cell escaped: ``mean |image − large|`` unescaped split
    the header into more cells than the separator row has, and renderers then show no table at all."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _param_columns(config: ExperimentConfig) -> list[str]:
    """Every swept parameter, in the order first met: its own column of results.csv."""
    names: list[str] = []
    for method in config.methods:
        names += [k for k in method.params if k not in names]
    return names


def write_results(config: ExperimentConfig, *, records=None, metrics=None):
    """results.md (human headers with units and arrows), results.csv (machine names) and trace.jsonl."""

    out_dir = config.output
    records = compact_records(config) if records is None else records
    metrics = build_metrics(config) if metrics is None else metrics
    rows = collect_results(config, records)
    quality = score_methods(config, records, BASELINE, metrics)
    params = _param_columns(config)
    fixed = [f.name for f in attrs.fields(ResultRow)]
    header = fixed[:1] + params + fixed[1:] + list(metrics)
    humans = [human_header(*COLUMNS[h]) if h in COLUMNS else h for h in fixed[:1] + params + fixed[1:]]
    humans += [human_header(m.label, m.unit, m.higher_is_better) for m in metrics.values()]
    digits = {**DIGITS, **{name: m.digits for name, m in metrics.items()}}
    lines = [markdown_row(humans), "|" + "---|" * len(header)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    by_name = {m.name: m for m in config.methods}
    for row in rows:
        point = by_name[row.method].params
        values = {**{m: None for m in metrics}, **{k: point.get(k) for k in params}, **attrs.asdict(row),
                  **quality.get(row.method, {})}
        lines.append(markdown_row([format_value(values[h]) if h in params and values[h] is not None
                                   else _fmt(values[h], digits.get(h, 0)) for h in header]))
        writer.writerow(["" if values[h] is None else (json.dumps(values[h]) if isinstance(values[h], (list, dict))
                                                       else values[h]) for h in header])
    notes = reliability_notes(metrics, min((r.images for r in rows), default=0))
    lines += [""] + [f"*{note}*" for note in notes] if notes else []  # below the table, after a blank line
    atomic_write(out_dir / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write(out_dir / "results.csv", buffer.getvalue().encode())
    atomic_write_chunks(out_dir / "trace.jsonl", trace_lines(config))  # streamed from the records on disk
    return rows, quality, metrics


#: What a report writes, in the order the closing line lists it.
REPORT_FILES = ("results.md", "results.csv", "trace.jsonl", "grid.png", "grid_prompts.txt", "masks.png", "frontier.png",
                "switch_steps.png", "change.png")


def write_report(config: ExperimentConfig, *, metrics=None) -> list[Path]:
    """Every report file from the run folder's current records and images; returns the paths written.

    Records are read one at a time and kept in compact form (:func:`~stitchkit.experiments.store.compact`),
    trace.jsonl is streamed, and the grid has a bounded number of columns and pages, so the end of a
    2,000-prompt run needs no more memory than its generation (``benchmarks/long_run_memory.py``).
    A stale record (written for another configuration) is not counted, with a warning."""

    stale: list = []
    unreadable: list = []
    records = compact_records(config, stale, unreadable)
    for units, what in ((stale, "were written for another configuration"), (unreadable, "cannot be read (truncated "
                                                                             "or damaged JSON)")):
        if units:
            method, pi, seed = units[0]
            warnings.warn(f"{len(units)} record(s) in {config.output} {what} (first: method {method!r}, prompt "
                          f"{pi}, seed {seed}): not counted; `stitchkit run` remakes them", stacklevel=2)
    rows, quality, metrics = write_results(config, records=records, metrics=metrics)
    written = [config.output / name for name in ("results.md", "results.csv", "trace.jsonl")]
    done = {(m, r["prompt_index"], r["seed"]) for m, recs in records.items() for r in recs}
    written += write_pictures(config, done)

    written += write_plots(config, records, rows, quality, metrics)
    log_report(config, rows=rows, quality=quality, pictures=written)  # trackers: TensorBoard, W&B, MLflow
    return written
