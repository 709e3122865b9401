"""Run an experiment: every method × prompt × seed, with outputs written atomically and reruns resuming.

Layout of the output folder::

    images/<method>/p<prompt>-s<seed>.png   the generated image
    records/<method>/p<prompt>-s<seed>.json one unit's measurements and its per-step trace
    trace.jsonl                             every step of every unit, one JSON object a line
    results.md, results.csv                 one row per method

A unit (method, prompt, seed) is done when its record exists; records are written last and atomically
(temp file + ``os.replace``), so an interrupted run loses at most the unit in flight and a rerun skips what
is done. The table is always rebuilt from the records, never from memory.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import attrs
import numpy as np

from stitchkit.config import ExperimentConfig, MethodConfig
from stitchkit.pictures import write_pictures
from stitchkit.trace import large_step_equivalents, latency_steps

BASELINE = "large"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unit_stem(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index:04d}-s{seed}"


def load_pair(config: ExperimentConfig):
    """The StitchPipeline the experiment's ``pair`` names."""
    import torch

    from stitchkit.pairs import load_pair_pipeline
    from stitchkit.pipeline import StitchPipeline

    pair = config.pair
    if pair.name is not None:
        return load_pair_pipeline(pair.name)
    return StitchPipeline.from_pretrained(pair.large, pair.small, torch_dtype=getattr(torch, pair.dtype),
                                          device=pair.device)


def _generate(pipe, config: ExperimentConfig, method: MethodConfig, prompt: str, seed: int, *, save: bool = True):
    import torch

    s = config.sampler
    generator = torch.Generator(device="cpu").manual_seed(seed)
    masks: dict[str, Any] = {"grid": None, "steps": []}

    def keep_mask(step: dict) -> None:  # the tokens the large model recomputed, for the mask picture
        if step["indices"] is not None:
            p = pipe.adapter.patch_size
            masks["grid"] = [step["latents"].shape[-2] // p, step["latents"].shape[-1] // p]
            masks["steps"].append([step["step"], step["indices"][0].tolist()])

    start = time.perf_counter()
    out = pipe(prompt, height=s.height, width=s.width, num_inference_steps=s.steps,
               guidance_scale=s.guidance_scale, negative_prompt=s.negative_prompt,
               max_sequence_length=s.max_sequence_length, generator=generator, output_type="pil",
               switch=method.switch, mask=method.mask, context=method.context,
               allow_unprofitable=config.allow_unprofitable, callback=keep_mask)
    total_ms = (time.perf_counter() - start) * 1000.0
    return out, total_ms, masks


def _record(method: str, prompt_index: int, prompt: str, seed: int, out, total_ms: float, costs) -> dict[str, Any]:
    from stitchkit.latency import predict_from_steps

    trace = out.trace
    # The latency model (Eq. 3-6) priced with the profiled costs, over this run's actual steps and masks.
    prediction = predict_from_steps(latency_steps(trace), costs)
    return {
        "method": method, "prompt_index": prompt_index, "prompt": prompt, "seed": seed,
        "latency_ms": total_ms,
        "denoise_ms": sum(r.large_ms + r.small_ms for r in trace),
        "predicted_denoise_ms": prediction.refined_predicted_ms or prediction.predicted_ms,
        "paper_predicted_denoise_ms": prediction.predicted_ms,
        "large_step_equivalents": large_step_equivalents(trace),
        "trace": [r.to_dict() for r in trace],
    }


def run_experiment(config: ExperimentConfig, *, progress: bool = True, pipe=None) -> Path:
    """Run every unit not yet done, then (re)write trace.jsonl and the results table. Returns the folder."""
    from tqdm.auto import tqdm

    out_dir = config.output
    units = [(m, pi, p, s) for m in _ordered(config.methods) for pi, p in enumerate(config.prompts)
             for s in config.seeds]
    todo = [u for u in units if not record_path(out_dir, u[0].name, u[1], u[3]).exists()]
    if todo:
        pipe = pipe or load_pair(config)
        threads = use_threads(pipe, config)
        size = _size(pipe, config)
        check_methods(pipe, config, size)
        # One untimed generation first: the first call pays for allocations and lazy initialisation
        # (the profile too would otherwise time a cold model: 44 ms against 19 ms on the shapes pair).
        _generate(pipe, config, config.methods[0], config.prompts[0], config.seeds[0])
        costs = ensure_profile(pipe, config, size)
        for method, pi, prompt, seed in tqdm(todo, desc=config.name, disable=not progress):
            out, total_ms, masks = _generate(pipe, config, method, prompt, seed)
            buffer = io.BytesIO()
            out.images[0].save(buffer, format="PNG")
            atomic_write(image_path(out_dir, method.name, pi, seed), buffer.getvalue())
            record = _record(method.name, pi, prompt, seed, out, total_ms, costs)
            record["masks"] = masks
            record["threads"], record["load"] = threads, _load()
            atomic_write(record_path(out_dir, method.name, pi, seed), json.dumps(record).encode())
    write_results(config)
    write_pictures(config)
    return out_dir


def use_threads(pipe, config: ExperimentConfig) -> int:
    """Set torch's threads for this run before any model runs: ``sampler.threads`` (``--threads``), else
    ``OMP_NUM_THREADS``, else the pair's default (:mod:`stitchkit.threads`). Returns the count (0 on a GPU)."""
    from stitchkit.threads import apply_threads

    return apply_threads(config.sampler.threads, pipe.adapter.large_transformer, pipe.small,
                         device=pipe.adapter.device.type)


def _load() -> float | None:
    """The 1-minute load average when a unit finished (its timings are suspect when it exceeds the cores)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@attrs.frozen(kw_only=True)
class _Size:
    height: int
    width: int
    text_tokens: int
    guided: bool


def _size(pipe, config: ExperimentConfig) -> _Size:
    """The image size and text length every unit of this experiment runs at (one prompt encoded to see)."""
    import torch

    s = config.sampler
    default = pipe.adapter.default_size()
    with torch.no_grad():
        cond = pipe.adapter.encode(guidance_scale=s.guidance_scale, num_images_per_prompt=1,
                                   max_sequence_length=s.max_sequence_length, prompt=config.prompts[0],
                                   prompt_2=None, prompt_3=None)
    return _Size(height=s.height or default, width=s.width or default, text_tokens=cond.prompt_embeds.shape[1],
                 guided=cond.guided)


def check_methods(pipe, config: ExperimentConfig, size: _Size) -> None:
    """Refuse, before anything runs, every method whose masks break Eq. 7-8 for this pair and size."""
    for i, method in enumerate(config.methods):
        pipe.check_plan(method.switch, height=size.height, width=size.width, text_tokens=size.text_tokens,
                        guided=size.guided, allow_unprofitable=config.allow_unprofitable,
                        path=f"methods[{i}].switch")


def ensure_profile(pipe, config: ExperimentConfig, size: _Size):
    """The pair's measured costs at this size: the cached profile, or one measured now and cached."""
    import torch

    from stitchkit.profile import ProfileKey, cpu_threads, load_profile, profile_transformers, save_profile

    vae = pipe.adapter.vae_scale_factor
    dtype = str(pipe.adapter.dtype).removeprefix("torch.")
    device = pipe.adapter.device.type
    key = ProfileKey(pair=pipe.pair_id, height=size.height, width=size.width, dtype=dtype, device=device,
                     batch=2 if size.guided else 1, text_tokens=size.text_tokens, threads=cpu_threads(device))
    costs = load_profile(key)
    if costs is None:
        from stitchkit.profile_checks import measure_checked

        costs, problems = measure_checked(lambda timings: profile_transformers(
            pipe.adapter.large_transformer, pipe.small, latent_height=size.height // vae,
            latent_width=size.width // vae, text_tokens=size.text_tokens, batch=key.batch,
            dtype=getattr(torch, dtype), device=device, num_threads=torch.get_num_threads(), timings=timings))
        if problems:  # used for this run's predictions, never cached: a noisy profile would price every later run
            import warnings

            warnings.warn(f"profile of {key.pair} is noisy ({problems[0]}); not cached; predictions of this run "
                          "are unreliable", stacklevel=2)
        else:
            save_profile(key, costs, extra={"load": _load()})
    return costs


def _ordered(methods: Iterable[MethodConfig]) -> list[MethodConfig]:
    """The large-only baseline first (if present), so the speedups are always against finished units."""
    methods = list(methods)
    return sorted(methods, key=lambda m: m.name != BASELINE)


def record_path(out_dir: Path, method: str, prompt_index: int, seed: int) -> Path:
    return out_dir / "records" / method / f"{unit_stem(prompt_index, seed)}.json"


def image_path(out_dir: Path, method: str, prompt_index: int, seed: int) -> Path:
    return out_dir / "images" / method / f"{unit_stem(prompt_index, seed)}.png"


def _image(out_dir: Path, method: str, prompt_index: int, seed: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(image_path(out_dir, method, prompt_index, seed)).convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


def load_records(config: ExperimentConfig) -> dict[str, list[dict]]:
    """Each method's finished units (a unit is done when its record exists), in prompt and seed order."""
    records = {}
    for method in config.methods:
        paths = (record_path(config.output, method.name, pi, seed)
                 for pi in range(len(config.prompts)) for seed in config.seeds)
        records[method.name] = [json.loads(path.read_text()) for path in paths if path.exists()]
    return records


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
        ))
    return rows


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _quality(config: ExperimentConfig, records: dict[str, list[dict]]) -> dict[str, dict]:
    """The experiment's quality metrics per method (``metrics:`` in the YAML), from the images on disk."""
    if not config.metrics:
        return {}
    from stitchkit.quality import score_methods

    units = {method: [(r["prompt"], image_path(config.output, method, r["prompt_index"], r["seed"])) for r in recs]
             for method, recs in records.items()}
    return score_methods(config, units, BASELINE)


def write_results(config: ExperimentConfig) -> list[ResultRow]:
    out_dir = config.output
    records = load_records(config)
    rows = collect_results(config, records)
    quality = _quality(config, records)
    header = [f.name for f in attrs.fields(ResultRow)] + list(config.metrics)
    digits = {"latency_ms": 1, "denoise_ms": 1, "speedup": 2, "large_step_equivalents": 2, "mean_abs_diff": 4,
              "predicted_denoise_ms": 1, "prediction_error_pct": 1, "caption_accuracy": 3,
              "feature_distance": 4, "frechet": 2, "psnr": 2, "ssim": 4}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        values = {**{m: None for m in config.metrics}, **attrs.asdict(row), **quality.get(row.method, {})}
        lines.append("| " + " | ".join(_fmt(values[h], digits.get(h, 0)) for h in header) + " |")
        writer.writerow(["" if values[h] is None else values[h] for h in header])
    atomic_write(out_dir / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write(out_dir / "results.csv", buffer.getvalue().encode())
    trace_lines = [json.dumps({"method": method, "prompt_index": r["prompt_index"], "seed": r["seed"], **step})
                   for method, recs in records.items() for r in recs for step in r["trace"]]
    atomic_write(out_dir / "trace.jsonl", ("\n".join(trace_lines) + "\n").encode())
    return rows
