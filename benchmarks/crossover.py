"""The crossover study (issue 21): on every rung of the ladder of pairs and at 20 and 50 steps, where does
stitching (alone, or composed with a cache) start to beat caching?

For each rung (a registered pair: the same large model, a small model of another quality) and each step
count, on the same prompts and seed, one thread:

* **caches** (the peers): MagCache at its authors' FLUX setting (``magcache-flux``), and at settings tuned
  for the shapes pair (``-shapes``: MagCache 0.24 and 0.5 / skip 6, FirstBlockCache 0.3);
* **stitching**: T-Stitch, SRDiffusion and HybridStitch-30, each calibrated *for this rung and step count*
  with ``calibrate --best feature_distance`` (:func:`stitchkit.calibration.best.best_at_target`) at the
  predicted speedup ``--target``;
* **compositions**: MagCache on the large model after a small-model head (T-Stitch's first 30 %), and the
  small model as the cache's corrector (``policies/corrector.py``: a skipped large step predicted as
  ``L_k + g (S_t - S_k)``), alone and after a small-model head, with its gain ablated (0, 0.5, 1).

A tuned setting's ``max_skip`` scales with the step count (``K · steps / 20``: the same share of the run);
a published setting is run as published. Timing, scoring and the round-robin order are those of
``benchmarks/frontier.py``: one thread's CPU time per ``pipe(...)`` call, speedup = the large model's total
over the method's; caption accuracy and feature distance against the large model's image (the shapes
pair's offline stand-ins for CLIP score and LPIPS).

Per cell it prints every row (with the latency model's speedup of the very steps each row took, priced
at SD3.5 Large / SD3 Medium's measured 768² costs: what the same decisions would save at paper scale;
not for cache rows, whose skips are inside the model's hooks), then per group the best speedup at caption accuracy >= ``--min-accuracy``
and at feature distance <= ``--max-feature``. Results accumulate in ``--results`` (JSON; a rerun skips the
cells it holds, so an interrupted study resumes), the table in ``benchmarks/results-crossover.txt`` when
run with ``--write``, the picture in ``--plot``. Two verdicts per cell: is a stitchkit method or composition
faster than the fastest cache at caption accuracy >= the bar, at an equal or better feature distance than
that cache's; and is the fastest stitchkit entry within a fixed quality budget (the bar and feature distance
<= ``--max-feature``) faster than the fastest cache within it. Exits 1 when neither holds on any rung and
step count (an honest loss is a valid outcome; the table says by how much).

    OMP_NUM_THREADS=1 python benchmarks/crossover.py [--pairs shapes,shapes-1x160] [--steps 20,50]
        [--prompts 20] [--target 2.0] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("cache", "stitching", "composition")


def caches(steps: int) -> list[dict]:
    """The peers: published settings as published, tuned ones with ``max_skip`` scaled to the step count."""
    k = lambda base: max(1, round(base * steps / 20))
    return [
        {"name": "magcache-flux", "group": "cache", "cache": "magcache-flux"},
        {"name": "magcache-0.24-shapes", "group": "cache",
         "cache": {"kind": "magcache", "threshold": 0.24, "max_skip_steps": k(3)}},
        {"name": "magcache-0.5-skip6-shapes", "group": "cache",
         "cache": {"kind": "magcache", "threshold": 0.5, "max_skip_steps": k(6), "retention_ratio": 0.1}},
        {"name": "first-block-0.3-shapes", "group": "cache", "cache": {"kind": "first-block", "threshold": 0.3}},
    ]


def compositions(steps: int) -> list[dict]:
    """MagCache after a small head, and the small-model corrector: after the same head at three error
    budgets (gain 0.5, its default), at gain 0 (the small model only decides when to anchor: the anchor's
    large output is reused as it is) and 1 (the whole small-model change), and with no head at all."""
    k = lambda base: max(1, round(base * steps / 20))
    corrector = lambda threshold, skips, **more: {
        "kind": "small-corrector", "threshold": threshold, "max_skip": k(skips), **more}
    head = {"small_head": 0.3, "large_head": 0.0}
    return [
        {"name": "magcache-0.24+small-head", "group": "composition",
         "switch": {"kind": "t-stitch", "small_fraction": 0.3},
         "cache": {"large": {"kind": "magcache", "threshold": 0.24, "max_skip_steps": k(3)}}},
        {"name": "small-corrector-0.3", "group": "composition", "switch": corrector(0.3, 6)},
        {"name": "small-head+small-corrector-0.15", "group": "composition", "switch": corrector(0.15, 6, **head)},
        {"name": "small-head+small-corrector-0.3", "group": "composition", "switch": corrector(0.3, 6, **head)},
        {"name": "small-head+small-corrector-0.5", "group": "composition", "switch": corrector(0.5, 8, **head)},
        {"name": "small-head+small-corrector-0.3-gain0", "group": "composition",
         "switch": corrector(0.3, 6, gain=0.0, **head)},
        {"name": "small-head+small-corrector-0.3-gain1", "group": "composition",
         "switch": corrector(0.3, 6, gain=1.0, **head)},
    ]


STITCHING = ("t-stitch", "srdiffusion", "hybridstitch-30")


def calibrated(pipe, pair: str, steps: int, prompts: list[str], target: float, units: int,
               candidates: int) -> list[dict]:
    """Each stitching method calibrated for this rung and step count (``calibrate --best feature_distance``)."""
    from stitchkit.calibration.best import best_at_target
    from stitchkit.calibration.setup import prepare
    from stitchkit.calibration.target import Target, with_values
    from stitchkit.errors import ConfigError
    from stitchkit.experiments.config import ExperimentConfig

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in STITCHING:
            start = time.perf_counter()
            try:
                config = ExperimentConfig.from_dict({
                    "name": "crossover", "pair": pair, "sampler": {"steps": steps, "guidance_scale": 3.0, "threads": 1},
                    "prompts": prompts[:units], "seeds": [0], "metrics": ["feature_distance"],
                    "allow_unprofitable": True, "output": tmp, "methods": [{"name": method, "switch": method}]})
                problem, setup = prepare(config, method, units=units, pipe=pipe)
                found = best_at_target(problem, setup, Target(kind="speedup", value=target), "feature_distance",
                                       count=candidates, tolerance=0.15)
            except ConfigError as err:
                print(f"  {method}: not calibrated ({err})", flush=True)
                continue
            params = with_values(problem.knobs, found.chosen.values)
            print(f"  calibrated {method} at {target:g}x on {units} units in {time.perf_counter() - start:.0f} s: "
                  f"{params}, predicted {found.chosen.summary.speedup:.2f}x, feature distance "
                  f"{found.chosen.score:.4f} (best of {len(found.candidates)})", flush=True)
            out.append({"name": f"{method}[{target:g}x]", "group": "stitching",
                        "switch": {"kind": method, **params}})
    return out


def sd35_costs():
    """SD3.5 Large / SD3 Medium at 768² (2,304 image tokens) as measured on an H100, bf16, batch 2
    (``benchmarks/results-h100-paper-scale.txt``, read from the file): L_l, L_s and the masked L_l(M)."""
    from stitchkit.cost.latency import Costs

    text = (ROOT / "benchmarks" / "results-h100-paper-scale.txt").read_text()
    block = text.split("768²", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines():
        words = line.split()
        if line.startswith("full large (stock)"):
            rows["large"] = float(words[3])
        elif line.startswith("full small (stock)"):
            rows["small"] = float(words[3])
        elif line.startswith("masked large"):
            rows[float(words[2].rstrip("%")) / 100] = float(words[4])
    masked = tuple((r, ms) for r, ms in rows.items() if isinstance(r, float))
    return Costs(large_ms=rows["large"], small_ms=rows["small"], masked_ms=masked, source="given")


def projected(histogram: dict, costs) -> float:
    """The latency model's speedup (Eq. 3-6 step by step, with L_l(M)) of the steps a row's traces took,
    priced with ``costs``: ``histogram`` maps ``"large fraction|small ran"`` to a count of steps."""
    from stitchkit.cost.latency import predict_from_steps

    steps = []
    for key, count in histogram.items():
        fraction, ran = key.split("|")
        steps += [(float(fraction), ran == "1")] * count
    prediction = predict_from_steps(steps, costs)
    return prediction.refined_speedup if prediction.refined_speedup is not None else prediction.speedup


def to_unit8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as a PNG stores them, in [-1, 1] (what the shapes stand-ins score)."""
    return (images.clamp(0, 1) * 255).round() / 127.5 - 1.0


def run_cell(pair: str, steps: int, prompts: list[str], args) -> dict:
    from stitchkit import StitchPipeline
    from stitchkit.shapes import scores as m
    from stitchkit.shapes.classifier import load_classifier

    pipe = StitchPipeline.from_pair(pair)
    classifier = load_classifier()
    print(f"\n== {pair}, {steps} steps: calibrating the stitching methods", flush=True)
    methods = ([{"name": "large", "group": "reference"}] + caches(steps)
               + calibrated(pipe, pair, steps, prompts, args.target, args.units, args.candidates)
               + compositions(steps))

    def run(method: dict, prompt: str):
        call = {k: method[k] for k in ("switch", "cache") if k in method}
        call.setdefault("switch", "large")
        start = time.thread_time()
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=3.0, output_type="pt",
                   generator=torch.Generator().manual_seed(0), **call)
        return time.thread_time() - start, out

    for method in methods:  # warm-up, and MagCache's ratio calibration on first use
        run(method, prompts[0])
    seconds = {x["name"]: 0.0 for x in methods}
    images = {x["name"]: [] for x in methods}
    large_eq = {x["name"]: 0.0 for x in methods}
    histogram: dict[str, dict[str, int]] = {x["name"]: {} for x in methods}
    for j, prompt in enumerate(prompts):
        for method in methods[j % len(methods):] + methods[:j % len(methods)]:  # round-robin start
            s, out = run(method, prompt)
            seconds[method["name"]] += s
            images[method["name"]].append(to_unit8(out.images))
            large_eq[method["name"]] += sum(r.large_tokens / r.num_tokens for r in out.trace)
            for r in out.trace:
                key = f"{r.large_tokens / r.num_tokens:.6g}|{int(r.small_tokens > 0)}"
                histogram[method["name"]][key] = histogram[method["name"]].get(key, 0) + 1
        print(f"  prompt {j + 1}/{len(prompts)}", flush=True)
    reference = torch.cat(images["large"])
    rows = []
    for method in methods:
        name, pics = method["name"], torch.cat(images[method["name"]])
        rows.append({"name": name, "group": method["group"], "speedup": seconds["large"] / seconds[name],
                     "accuracy": m.caption_accuracy(classifier, pics, prompts)["all"],
                     "feature": float(m.feature_distance(classifier, pics, reference).mean()),
                     "large_eq": large_eq[name] / len(prompts), "steps": histogram[name],
                     "spec": {k: method[k] for k in ("switch", "cache") if k in method}})
    return {"pair": pair, "steps": steps, "prompts": len(prompts), "rows": rows,
            "load": os.getloadavg()[0]}


def rung_quality(pair: str) -> dict:
    """The small model alone against the large one, from the pair's ``pair.json`` evaluation."""
    from stitchkit.shapes.pair import SHIPPED_PAIRS

    info = json.loads((SHIPPED_PAIRS[pair] / "pair.json").read_text())["evaluation"]["small"]
    return {"accuracy": info["accuracy"]["all"], "feature": info["vs_large"]["feature_distance"]}


def best(rows: list[dict], group: str, ok) -> dict | None:
    return max((r for r in rows if r["group"] == group and ok(r)), key=lambda r: r["speedup"], default=None)


def summarize(cells: dict, args) -> tuple[list[str], bool]:
    """The table's lines and whether any cell has a stitchkit win over the fastest cache at equal quality."""
    lines, won = [], False
    for key, cell in cells.items():
        rows = cell["rows"]
        q = rung_quality(cell["pair"])
        lines.append(f"\n## {cell['pair']} (small alone: caption accuracy {q['accuracy']:.3f}, feature distance to "
                     f"the large {q['feature']:.3f}), {cell['steps']} steps, {cell['prompts']} prompts")
        lines.append("| method | group | speedup | caption acc. | feature dist. | large-step eq. (trace) | "
                     "same steps at SD3.5 costs |")
        lines.append("|---|---|---|---|---|---|---|")
        costs = sd35_costs()
        for r in sorted(rows, key=lambda r: -r["speedup"]):
            # A cache's skips happen inside the model's hooks, out of the trace's sight: no projection.
            scale = "–" if "cache" in r["spec"] or r["group"] == "cache" else f"{projected(r['steps'], costs):.2f}x"
            lines.append(f"| {r['name']} | {r['group']} | {r['speedup']:.2f}x | {r['accuracy']:.3f} | "
                         f"{r['feature']:.4f} | {r['large_eq']:.2f} | {scale} |")
        at_bar = lambda r: r["accuracy"] >= args.min_accuracy
        at_feature = lambda r: r["feature"] <= args.max_feature
        for label, ok in ((f"caption accuracy >= {args.min_accuracy}", at_bar),
                          (f"that and feature distance <= {args.max_feature}", lambda r: at_bar(r) and at_feature(r))):
            found = {g: best(rows, g, ok) for g in GROUPS}
            lines.append(f"best at {label}: " + "; ".join(
                f"{g} " + ("none" if r is None else f"{r['name']} {r['speedup']:.2f}x (feature {r['feature']:.4f})")
                for g, r in found.items()))
        peer = best(rows, "cache", at_bar)
        ours = [r for r in rows if r["group"] in ("stitching", "composition") and at_bar(r)]
        if peer is None:
            verdict = "no cache reaches the accuracy bar"
            won = won or bool(ours)
        else:
            beating = [r for r in ours if r["speedup"] > peer["speedup"] and r["feature"] <= peer["feature"]]
            closest = max((r for r in ours if r["feature"] <= peer["feature"]), key=lambda r: r["speedup"],
                          default=None)
            if beating:
                r = max(beating, key=lambda r: r["speedup"])
                verdict = (f"WIN: {r['name']} {r['speedup']:.2f}x at feature {r['feature']:.4f} beats "
                           f"{peer['name']} {peer['speedup']:.2f}x at {peer['feature']:.4f}")
                won = True
            elif closest is not None:
                verdict = (f"LOSS: the fastest stitchkit entry at {peer['name']}'s quality, {closest['name']}, reaches "
                           f"{closest['speedup']:.2f}x, {closest['speedup'] / peer['speedup']:.0%} of its "
                           f"{peer['speedup']:.2f}x")
            else:
                verdict = f"LOSS: no stitchkit entry reaches {peer['name']}'s quality ({peer['feature']:.4f})"
        lines.append(verdict)
        # The same at a fixed quality budget: the fastest of each side among the rows within it.
        within = lambda r: at_bar(r) and at_feature(r)
        peer, ours = best(rows, "cache", within), max(
            (r for r in rows if r["group"] in ("stitching", "composition") and within(r)),
            key=lambda r: r["speedup"], default=None)
        budget = f"caption accuracy >= {args.min_accuracy} and feature distance <= {args.max_feature}"
        if ours is not None and (peer is None or ours["speedup"] > peer["speedup"]):
            won = True
            lines.append(f"WIN at {budget}: {ours['name']} {ours['speedup']:.2f}x (feature {ours['feature']:.4f}) "
                         + ("where no cache gets within it" if peer is None else
                            f"against {peer['name']} {peer['speedup']:.2f}x ({peer['feature']:.4f})"))
        else:
            lines.append(f"LOSS at {budget}: " + ("no stitchkit entry gets within it" if ours is None else
                         f"{ours['name']} {ours['speedup']:.2f}x against {peer['name']} {peer['speedup']:.2f}x, "
                         f"{ours['speedup'] / peer['speedup']:.0%} of its speed"))
    return lines, won


def plot(cells: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    conditions = ((f"caption accuracy >= {args.min_accuracy}", lambda r: r["accuracy"] >= args.min_accuracy),
                  (f"that and feature distance <= {args.max_feature}",
                   lambda r: r["accuracy"] >= args.min_accuracy and r["feature"] <= args.max_feature))
    colours = {"cache": "tab:blue", "stitching": "tab:orange", "composition": "tab:green"}
    steps_seen = sorted({c["steps"] for c in cells.values()})
    for ax, (title, ok) in zip(axes, conditions):
        for steps, style in zip(steps_seen, ("-o", "--s", ":^")):
            for group in GROUPS:
                points = []
                for cell in cells.values():
                    if cell["steps"] != steps:
                        continue
                    r = best(cell["rows"], group, ok)
                    points.append((rung_quality(cell["pair"])["accuracy"], r["speedup"] if r else 0.0))
                points.sort()
                if points:
                    ax.plot(*zip(*points), style, color=colours[group], label=f"{group}, {steps} steps")
        for pair in sorted({c["pair"] for c in cells.values()}):
            q = rung_quality(pair)
            ax.annotate(f"{pair}\n(small: feature dist. {q['feature']:.2f})", (q["accuracy"], 1.0),
                        xycoords=("data", "axes fraction"), fontsize=7, ha="center", va="top")
        ax.set_title(f"best speedup at {title}", fontsize=10)
        ax.set_xlabel("the small model alone: caption accuracy")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup over the large model (CPU time, one thread)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Where stitching meets caching: the shapes ladder of pairs (0 = none reaches the bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="shapes,shapes-1x160")
    parser.add_argument("--steps", default="20,50")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--target", type=float, default=2.0, help="the stitching methods' predicted speedup")
    parser.add_argument("--units", type=int, default=4, help="calibration units (the first prompts)")
    parser.add_argument("--candidates", type=int, default=3, help="calibrate --best's candidates")
    parser.add_argument("--min-accuracy", type=float, default=0.98)
    parser.add_argument("--max-feature", type=float, default=0.10)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results-crossover.json"))
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "crossover.png"))
    parser.add_argument("--write", action="store_true", help="also write benchmarks/results-crossover.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)

    prompts_path = ROOT / "examples" / "shapes_prompts_200.txt"
    prompts = [p.strip() for p in prompts_path.read_text().splitlines() if p.strip()][:args.prompts]
    results = Path(args.results)
    state = json.loads(results.read_text()) if results.is_file() else {"cells": {}}
    for pair in args.pairs.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            key = f"{pair}/{steps}"
            if key in state["cells"] and state["cells"][key]["prompts"] == len(prompts):
                print(f"{key}: in {results.name} already (delete it there to rerun)")
                continue
            start = time.perf_counter()
            state["cells"][key] = run_cell(pair, steps, prompts, args)
            state["cells"][key]["minutes"] = round((time.perf_counter() - start) / 60, 1)
            tmp = results.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            os.replace(tmp, results)  # a cell is kept whole or not at all
    cells = {k: c for k, c in state["cells"].items()
             if c["pair"] in args.pairs.split(",") and str(c["steps"]) in args.steps.split(",")}
    lines, won = summarize(cells, args)
    print("\n".join(lines))
    plot(cells, args, Path(args.plot))
    if args.write:
        header = [f"# OMP_NUM_THREADS=1 python benchmarks/crossover.py --pairs {args.pairs} --steps {args.steps} "
                  f"--prompts {args.prompts} --target {args.target:g} --units {args.units} --candidates "
                  f"{args.candidates}", "# speedups: one thread's CPU time; load average per cell: "
                  + ", ".join(f"{k} {c['load']:.1f}" for k, c in cells.items())]
        (ROOT / "benchmarks" / "results-crossover.txt").write_text("\n".join(header + lines) + "\n")
    print("\n" + ("a stitchkit method or composition beats the fastest cache at equal quality on at least one cell"
                  if won else "LOSS on every cell: no stitchkit method or composition beats the fastest cache"))
    return 0 if won else 1


if __name__ == "__main__":
    sys.exit(main())
