"""Feed each metric of an experiment the images, prompts and large-model images it asks for."""

from __future__ import annotations

from typing import Any

from stitchkit.experiments.metrics.base import batches
from stitchkit.experiments.store import image_path


def build_metrics(config, registry=None) -> dict[str, Any]:
    """``{column name: metric object}`` for the experiment's ``metrics:``, built through the registry."""
    if not config.metrics:
        return {}
    registry = registry or config.registry
    return {m.name: registry.create("metric", {"kind": m.kind, **m.params}, path=f"metrics[{i}]")[0]
            for i, m in enumerate(config.metrics)}


def score_methods(config, records: dict[str, list[dict]], baseline: str, metrics: dict[str, Any] | None = None
                  ) -> dict[str, dict[str, float]]:
    """``{method: {metric: value}}`` from the images on disk, so a resumed run scores what it wrote.

    A metric that needs the large model's image is computed for a method only when every one of its units
    has a finished large-only twin, and never for the large-only method itself.
    """
    metrics = build_metrics(config) if metrics is None else metrics
    out = config.output
    base = {(r["prompt_index"], r["seed"]) for r in records.get(baseline, [])}
    scores: dict[str, dict[str, float]] = {}
    for method, recs in records.items():
        if not recs:
            continue
        paths = [image_path(out, method, r["prompt_index"], r["seed"]) for r in recs]
        prompts = [r["prompt"] for r in recs]
        row = {}
        for name, metric in metrics.items():
            large = None
            if "large_image" in metric.needs:
                if method == baseline or any((r["prompt_index"], r["seed"]) not in base for r in recs):
                    continue
                large = [image_path(out, baseline, r["prompt_index"], r["seed"]) for r in recs]
            row[name] = float(metric.score(batches(paths, prompts, large)))
        scores[method] = row
    return scores
