"""The README's tables (a)-(c) from a finished run of ``examples/paper_tables.calibrated.yaml``.

Reads the run folder's ``results.csv`` (quality, large-step equivalents, the latency model's predicted
denoising time of every method) and ``config.resolved.yaml`` (each method's calibrated knob), and prints
three markdown tables. The predicted speedup is the large model's predicted denoising time over the
method's, both priced by the same profile the calibration used; methods are grouped by the names
``examples/paper_tables.sh`` gives them (``M[2.0x]``, ``M[1.5x]``, ``M[=hybridstitch-30]``, plain ``M``).

    python examples/paper_tables_summary.py runs/paper_tables [--profile examples/paper_tables.profile.json]

``--profile`` re-prices every unit's trace (``predict_from_steps``, Eq. 3-6 with the measured masked cost)
with another profile's costs: a profile drawn while the machine was busy can misprice masked steps by a
third on this 3.5 M-parameter pair, so the README's tables use the quiet profile that
``benchmarks/calibrated_speedup.py`` held against a measured run (``examples/paper_tables.profile.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import yaml

METRICS = (("caption_accuracy", "caption acc. ↑", 3), ("feature_distance", "feature dist. ↓", 3),
           ("frechet", "Fréchet ↓", 1), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3))
SINGLE = ("t-stitch", "srdiffusion", "hybridstitch-10", "hybridstitch-20", "hybridstitch-30", "hybridstitch-40")
PAPER = ("large", "small", "t-stitch", "srdiffusion", "hybridstitch-10", "hybridstitch-20", "hybridstitch-30",
         "hybridstitch-40", "hybridstitch-20-10", "hybridstitch-30-10", "hybridstitch-40-30")
ABLATIONS = tuple(f"{kind}-{size}" for kind in ("staticmask", "fulllarge") for size in (10, 20, 30, 40))


def knob(switch) -> str:
    """The calibrated number(s) of a method's switch, as the table shows them."""
    if not isinstance(switch, dict):
        return "–"
    for key in ("thresholds", "threshold", "small_fraction"):
        if key in switch:
            value = switch[key]
            shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
            return f"{key.replace('_', ' ')} {shown}"
    return "–"


def repriced(folder: Path, methods, profile: Path) -> dict[str, float]:
    """Each method's mean predicted denoising time (ms) over its records, priced with ``profile``'s costs."""
    from stitchkit.cost.latency import Costs, predict_from_steps
    from stitchkit.loop.trace import latency_steps

    costs = Costs.from_dict(json.loads(profile.read_text())["costs"])
    means = {}
    for name in methods:
        times = []
        for path in sorted((folder / "records" / name).glob("*.json")):
            prediction = predict_from_steps(latency_steps(json.loads(path.read_text())["trace"]), costs)
            times.append(prediction.best_predicted_ms)
        if times:
            means[name] = statistics.fmean(times)
    return means


def table(rows: dict[str, dict], knobs: dict[str, str], names: list[str]) -> list[str]:
    base = float(rows["large"]["predicted_denoise_ms"])
    head = ["method", "calibrated", "predicted speedup", "large-step equiv."] + [label for _, label, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        if name not in rows:
            lines.append(f"| {name} | not run (see examples/paper_tables.calibration.log) |" + " |" * (len(head) - 2))
            continue
        row = rows[name]
        cells = [name, knobs.get(name, "–"), f"{base / float(row['predicted_denoise_ms']):.2f}×",
                 f"{float(row['large_step_equivalents']):.2f}"]
        cells += ["–" if row.get(key) in (None, "") else f"{float(row[key]):.{digits}f}" for key, _, digits in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/paper_tables")
    parser.add_argument("--profile", type=Path, help="re-price every trace with this profile file's costs")
    args = parser.parse_args(argv)
    folder = Path(args.run_dir)
    with open(folder / "results.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    if args.profile is not None:
        for name, ms in repriced(folder, rows, args.profile).items():
            rows[name]["predicted_denoise_ms"] = ms
    config = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    knobs = {m["name"]: knob(m.get("switch")) for m in config["methods"]}
    sections = [
        ("(a) iso-speed, 2.0×", ["large"] + [f"{m}[2.0x]" for m in SINGLE]),
        ("(a) iso-speed, 1.5×", ["large"] + [f"{m}[1.5x]" for m in SINGLE]),
        ("(b) iso-quality: tuned to HybridStitch-30's caption accuracy",
         ["hybridstitch-30", "srdiffusion[=hybridstitch-30]", "t-stitch[=hybridstitch-30]"]),
        ("(c) the paper's configurations at the paper's speedups", list(PAPER)),
        ("(c) Table 2's ablations at their HybridStitch size's thresholds", list(ABLATIONS)),
    ]
    for title, names in sections:
        print(f"**{title}**\n")
        print("\n".join(table(rows, knobs, names)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
