"""The frontier against the peers: diffusers' caches and RAS beside stitchkit's methods and compositions.

Runs every method of ``examples/peers.yaml`` (and the large model alone, the reference) on the same prompts
and seed, one thread, through ``StitchPipeline`` directly, and scores with the shapes pair's stand-ins
(:mod:`stitchkit.shapes.scores`: caption accuracy, feature distance and PSNR against the large model's image of
the same prompt and seed, on images rounded to 8 bits as a PNG would be). Then, among the methods with
caption accuracy >= ``--min-accuracy`` (0.98), it prints the fastest peer and the fastest stitchkit method or
composition, and exits 1 unless a stitchkit method is faster than the fastest peer at an equal or better
feature distance (and, with ``--require-win`` off, 0 regardless, for a table only).

Timing: the thread's CPU time (``time.thread_time``; one thread does all the work) of each
``pipe(...)`` call, methods taken round-robin per prompt so that a drifting load cancels; speedup = the
large model's total over the method's. Each method runs once on the first prompt before timing (MagCache's
first use calibrates its ratios, cached after). On a loaded machine the figures are noisy: quote them only
after a quiet re-run.

    OMP_NUM_THREADS=1 python benchmarks/frontier.py [examples/peers.yaml] [--prompts 64] [--only a,b]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CALL_KEYS = ("switch", "mask", "context", "cache")


def load_methods(path: Path, only: set[str] | None) -> tuple[dict, list[dict]]:
    data = yaml.safe_load(path.read_text())
    methods = []
    for i, m in enumerate(data["methods"]):
        if m.get("group") not in ("peer", "stitchkit"):
            sys.exit(f"methods[{i}].group: must be peer or stitchkit; got {m.get('group')!r}")
        if only is None or m["name"] in only:
            methods.append(m)
    return data, methods


def to_unit8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as a PNG stores them, in [-1, 1] (what the shapes metric plugins score)."""
    return (images.clamp(0, 1) * 255).round() / 127.5 - 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "examples" / "peers.yaml"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--only", default=None, help="comma-separated method names (the large model always runs)")
    parser.add_argument("--min-accuracy", type=float, default=0.98)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from stitchkit import StitchPipeline
    from stitchkit.shapes import scores as m
    from stitchkit.shapes.classifier import load_classifier

    path = Path(args.config)
    data, methods = load_methods(path, set(args.only.split(",")) if args.only else None)
    prompts = [p.strip() for p in (path.parent / data["prompts_file"]).read_text().splitlines() if p.strip()]
    prompts = prompts[:args.prompts]
    sampler = data.get("sampler", {})
    steps, guidance, seed = int(sampler.get("steps", 20)), float(sampler.get("guidance_scale", 3.0)), int(data.get("seed", 0))
    pipe = StitchPipeline.from_shapes()
    classifier = load_classifier()
    everyone = [{"name": "large", "group": "reference"}] + methods

    def run(method: dict, prompt: str):
        call = {k: method[k] for k in CALL_KEYS if k in method}
        call.setdefault("switch", "large")
        start = time.thread_time()
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(seed), **call)
        return time.thread_time() - start, out

    print(f"{len(everyone)} methods x {len(prompts)} prompts, {steps} steps, guidance {guidance}, one thread; "
          f"load average at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine when "
          "above the core count: CPU-time speedups, still noisy)", flush=True)
    for method in everyone:  # warm-up, and MagCache's calibration on first use
        run(method, prompts[0])
    seconds = {m_["name"]: 0.0 for m_ in everyone}
    images: dict[str, list[torch.Tensor]] = {m_["name"]: [] for m_ in everyone}
    large_eq = {m_["name"]: 0.0 for m_ in everyone}
    for j, prompt in enumerate(prompts):
        order = everyone[j % len(everyone):] + everyone[:j % len(everyone)]  # round-robin start
        for method in order:
            s, out = run(method, prompt)
            seconds[method["name"]] += s
            images[method["name"]].append(to_unit8(out.images))
            large_eq[method["name"]] += sum(r.large_tokens / r.num_tokens for r in out.trace)
        print(f"  prompt {j + 1}/{len(prompts)}", flush=True)

    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    reference = torch.cat(images["large"])
    rows = []
    for method in everyone:
        name = method["name"]
        pics = torch.cat(images[name])
        rows.append({
            "name": name, "group": method["group"], "speedup": seconds["large"] / seconds[name],
            "accuracy": m.caption_accuracy(classifier, pics, prompts)["all"],
            "feature": float(m.feature_distance(classifier, pics, reference).mean()),
            "psnr": float(m.psnr(pics, reference).mean()), "large_eq": large_eq[name] / len(prompts)})
    print("\n| method | group | speedup | caption acc. | feature dist. | PSNR vs large | large-step eq. (trace) |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["speedup"]):
        print(f"| {r['name']} | {r['group']} | {r['speedup']:.2f}x | {r['accuracy']:.3f} | {r['feature']:.4f} | "
              f"{r['psnr']:.1f} | {r['large_eq']:.2f} |")

    good = [r for r in rows if r["accuracy"] >= args.min_accuracy]
    best = {g: max((r for r in good if r["group"] == g), key=lambda r: r["speedup"], default=None)
            for g in ("peer", "stitchkit")}
    print(f"\nAt caption accuracy >= {args.min_accuracy}:")
    for g, r in best.items():
        print(f"  fastest {g}: " + ("none" if r is None else
                                   f"{r['name']}  {r['speedup']:.2f}x, feature distance {r['feature']:.4f}"))
    peer, ours = best["peer"], best["stitchkit"]
    if ours is None:
        print("LOSS: no stitchkit method or composition reaches the accuracy bar.")
        return 1
    if peer is None:
        print("WIN: no peer reaches the accuracy bar.")
        return 0
    beating = [r for r in good if r["group"] == "stitchkit" and r["speedup"] > peer["speedup"]
               and r["feature"] <= peer["feature"]]
    if beating:
        r = max(beating, key=lambda r: r["speedup"])
        print(f"WIN: {r['name']} beats {peer['name']} ({r['speedup']:.2f}x vs {peer['speedup']:.2f}x at feature "
              f"distance {r['feature']:.4f} <= {peer['feature']:.4f}).")
        return 0
    same_quality = [r for r in good if r["group"] == "stitchkit" and r["feature"] <= peer["feature"]]
    closest = max(same_quality, key=lambda r: r["speedup"], default=None)
    print(f"LOSS: no stitchkit method is faster than {peer['name']} ({peer['speedup']:.2f}x, feature distance "
          f"{peer['feature']:.4f}) at equal or better feature distance; "
          + (f"the fastest that matches its quality, {closest['name']}, reaches {closest['speedup']:.2f}x "
             f"({closest['speedup'] / peer['speedup']:.0%} of its speed)." if closest else
             f"none matches its quality (the fastest, {ours['name']}, {ours['speedup']:.2f}x at "
             f"{ours['feature']:.4f})."))
    return 1


if __name__ == "__main__":
    sys.exit(main())
