"""The terminal's summary of a run: results.md narrowed to what decides between methods (method, swept
parameters, images, speedup, large-step equivalents and the metrics), columns padded to line up. The full
table, with latency, the latency model's prediction and its error and the sampler, stays in results.md.

Read back from results.md and results.csv (whose columns are the same, machine-named), so the summary can
never show a number the files do not hold.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

#: The fixed columns the summary keeps (machine names, results.csv); swept parameters and metrics are kept too.
KEPT = ("method", "images", "speedup", "large_step_equivalents")
#: results.csv's last fixed column: the metrics follow it.
LAST_FIXED = "sampler"


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (``\\|`` inside a cell is text, not a border)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def summary_table(folder: Path) -> str:
    """results.md narrowed to :data:`KEPT`, the swept parameters and the metrics, as an aligned table."""
    with open(folder / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    lines = (folder / "results.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    metrics = header[header.index(LAST_FIXED) + 1:] if LAST_FIXED in header else []
    params = header[1:header.index("images")] if "images" in header else []
    keep = [i for i, name in enumerate(header) if name in KEPT or name in params or name in metrics]
    rows = [[_cells(line)[i] for i in keep] for line in table if not line.startswith("|---")]
    widths = [max(len(r[j]) for r in rows) for j in range(len(keep))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(rows[0], widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows[1:]]
    notes = [line for line in lines if line and not line.startswith("|")]
    return "\n".join(out + ([""] + notes if notes else []))
