"""``--match METHOD --metric NAME``: tune a baseline's threshold until its quality matches another method's.

The paper's protocol (§4.1): SRDiffusion's threshold was set "ensuring comparable quality across all
methods". Quality needs the images, so every candidate the bisection visits is generated (replay only tells
where each unit switches; the run with exactly those switch steps is the candidate's run, and is cached by
them). The baseline's knob (one threshold, or T-Stitch's ``small_fraction``) is assumed to trade quality
for speed monotonically: the fastest candidate whose score is at least as good as the reference's wins.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stitchkit.calibration.replay import ScheduledPolicy, scheduled_like
from stitchkit.calibration.setup import find_method
from stitchkit.calibration.target import Found, candidates
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import MetricConfig
from stitchkit.experiments.metrics.base import batches


def _metric(config, name: str):
    """The metric plugin ``name`` with its parameters from the experiment's ``metrics:`` (else defaults),
    checked for this pair (weights, classifier) before anything is generated."""
    spec = next((m for m in config.metrics if m.name == name), None) or MetricConfig(kind=name)
    metric = config.registry.create("metric", {"kind": spec.kind, **spec.params}, path="--metric")[0]
    metric.check(pair_name=config.pair.name)
    return metric


def metric_score(config, name: str, images: list[tuple[str, Any]], large_images: list[Any]) -> float:
    """The metric plugin ``name`` over ``(prompt, PIL image)`` units, paired with the large model's images
    of the same units. The one place that knows how metrics are looked up."""
    metric = _metric(config, name)
    with tempfile.TemporaryDirectory() as folder:
        paths: dict[str, list] = {"large": [], "candidate": []}
        for i, ((_, image), large) in enumerate(zip(images, large_images)):
            for method, picture in (("candidate", image), ("large", large)):
                path = Path(folder) / method / f"u{i:04d}.png"
                path.parent.mkdir(exist_ok=True)
                picture.save(path)
                paths[method].append(path)
        prompts = [prompt for prompt, _ in images]
        large = paths["large"] if "large_image" in metric.needs else None
        return float(metric.score(batches(paths["candidate"], prompts, large)))


def match_quality(problem, setup, reference: str, metric: str) -> tuple[Found, float, float]:
    """``(found, its score, the reference's score)``: the fastest single-knob setting at least as good."""

    better = _metric(setup.config, metric).higher_is_better
    if len(problem.knobs) != 1:
        raise ConfigError("--method", f"has {len(problem.knobs)} thresholds; --match tunes one",
                          "use --target-speedup for HybridStitch")
    config = setup.config
    ref = find_method(config, reference, setup.pipe.registry, flag="--match")
    large = [setup.generate(u, "large", output_type="pil").images[0] for u in setup.units]

    def score(images) -> float:
        return metric_score(config, metric, [(p, im) for (p, _), im in zip(setup.units, images)], large)

    ref_images = []
    for unit in setup.units:
        out = setup.pipe(unit[0], **_call(setup, unit), switch=ref.switch, mask=ref.mask, context=ref.context,
                         allow_unprofitable=True)
        ref_images.append(out.images[0])
    theirs = score(ref_images)
    values = candidates(problem, [])
    policy = problem.build([values[0]])  # only its stages and measures, for the recording policy
    cache: dict[tuple, Any] = {}

    def images_for(value: float):
        replays = problem.replays([value])
        out = []
        for unit, r in zip(setup.units, replays):
            key = (unit, r.transitions)
            if key not in cache:
                forced: ScheduledPolicy = scheduled_like(policy, r.transitions)
                cache[key] = setup.generate(unit, forced, output_type="pil").images[0]
            out.append(cache[key])
        return out

    lo, hi, hit = 0, len(values) - 1, None  # quality falls as the knob rises: the largest still as good
    while lo <= hi:
        mid = (lo + hi) // 2
        mine = score(images_for(values[mid]))
        if (mine >= theirs) if better else (mine <= theirs):
            hit, lo = (values[mid], mine), mid + 1
        else:
            hi = mid - 1
    if hit is None:
        raise ConfigError("--match", f"no {setup.method.name} setting reaches {reference}'s {metric} ({theirs:.4g})",
                          "on these units; try more --units or another metric")
    return Found(values=(hit[0],), summary=problem.summary([hit[0]]), runs=problem.store.runs), hit[1], theirs


def _call(setup, unit) -> dict[str, Any]:
    import torch

    s = setup.sampler
    return dict(height=s["height"], width=s["width"], num_inference_steps=s["steps"],
                guidance_scale=s["guidance_scale"], negative_prompt=setup.config.sampler.negative_prompt,
                max_sequence_length=setup.config.sampler.max_sequence_length, num_frames=s.get("num_frames"),
                generator=torch.Generator(device="cpu").manual_seed(unit[1]))
