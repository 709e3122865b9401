"""The fixed columns of ``results.md`` / ``results.csv``: their human headers, units, which way is better and
how many digits they print with. The tables (:mod:`.reports`) and the plots (:mod:`.plots`) label
axes from the same entries.
"""

from __future__ import annotations

#: Human header, unit and which way is better (``True``: higher) of each fixed column of results.md.
COLUMNS: dict[str, tuple[str, str, bool | None]] = {
    "method": ("method", "", None),
    "images": ("images", "", None),
    "latency_ms": ("latency", "ms", False),
    "denoise_ms": ("denoising", "ms", False),
    "speedup": ("speedup vs large", "×", True),
    "large_step_equivalents": ("large-step equivalents", "steps", False),
    "mean_abs_diff": ("mean |image − large|", "", False),
    "predicted_denoise_ms": ("predicted denoising", "ms", None),
    "prediction_error_pct": ("prediction error", "%", None),
    "sampler": ("sampler", "", None),
}
DIGITS = {"latency_ms": 1, "denoise_ms": 1, "speedup": 2, "large_step_equivalents": 2, "mean_abs_diff": 4,
          "predicted_denoise_ms": 1, "prediction_error_pct": 1}


def human_header(label: str, unit: str, higher_is_better: bool | None) -> str:
    """``latency (ms) ↓``: the label, its unit, and an arrow pointing the better way."""
    unit = f" ({unit})" if unit else ""
    arrow = "" if higher_is_better is None else (" ↑" if higher_is_better else " ↓")
    return f"{label}{unit}{arrow}"
