"""Run an experiment: every method × prompt × seed, with outputs written atomically and reruns resuming.

Layout of the output folder (paths: :mod:`~stitchkit.experiments.store`)::

    images/<method>/p<prompt>-s<seed>.png   the generated image (<prompt>: the index in the prompt source);
                                            for a video pair, a strip of chosen frames (grid, metrics)
    videos/<method>/p<prompt>-s<seed>.mp4   a video pair's unit (diffusers' export_to_video)
    records/<method>/p<prompt>-s<seed>.json one unit's measurements and its per-step trace
    config.resolved.yaml, environment.json  what ran, and where (:mod:`~stitchkit.experiments.run_folder`)
    trace.jsonl, results.md, results.csv    the reports (:mod:`~stitchkit.experiments.reports`), with the
    grid.png, masks.png, *.png plots        pictures and plots, all rebuilt from the records

A unit (method, prompt, seed) is done when its record exists and holds the unit's key (a hash of what
determines its output: :mod:`~stitchkit.experiments.unit_keys`); records are written last and atomically
(temp file + ``os.replace``), so an interrupted run loses at most the unit in flight and a rerun skips what
is done. The table is always rebuilt from the records, never from memory.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import attrs

from stitchkit.cost.latency import predict_from_steps
from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.experiments.config import ExperimentConfig, MethodConfig
from stitchkit.experiments.distributed import barrier, broadcast, gather, process_group, shard, world_from_env
from stitchkit.experiments.guard import guarded_run
from stitchkit.experiments.metrics.scoring import build_metrics
from stitchkit.experiments.pair_setup import (
    check_methods,
    ensure_profile,
    load_average,
    load_pair,
    ran_sampler,
    run_size,
    use_threads,
)
from stitchkit.experiments.plan import method_weights
from stitchkit.experiments.reports import write_report
from stitchkit.experiments.resume import UnitsFailed, units_to_do
from stitchkit.experiments.run_folder import claim, write_environment
from stitchkit.experiments.run_work import RunWork
from stitchkit.experiments.store import (
    atomic_path,
    atomic_write,
    image_path,
    record_path,
    unit_stem,
    video_path,
)
from stitchkit.experiments.unit_keys import FIELD as KEY_FIELD
from stitchkit.experiments.unit_keys import UnitKeys
from stitchkit.loop.trace import large_step_equivalents, latency_steps
from stitchkit.pipeline.units import generate_units, mask_grid
from stitchkit.pipeline.video import frame_strip, save_video


def _generate(pipe, config: ExperimentConfig, method: MethodConfig, prompt: str, seed: int, *, save: bool = True):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    masks: dict[str, Any] = {"grid": None, "steps": []}

    def keep_mask(step: dict) -> None:  # the tokens the large model recomputed, for the mask picture
        if step["indices"] is not None:
            masks["grid"] = mask_grid(pipe, step["latents"])
            masks["steps"].append([step["step"], step["indices"][0].tolist()])

    start = time.perf_counter()
    out = pipe(prompt, generator=generator, output_type="pil", callback=keep_mask, **_call(pipe, config, method))
    total_ms = (time.perf_counter() - start) * 1000.0
    return out, total_ms, masks


def _call(pipe, config: ExperimentConfig, method: MethodConfig) -> dict[str, Any]:
    """What every unit of ``method`` passes to the pipeline besides its prompt and seed."""
    s = config.sampler
    sampler = ran_sampler(pipe, config)  # explicit, so that what ran is what the record says
    frames = {"num_frames": sampler["num_frames"]} if "num_frames" in sampler else {}
    return dict(height=sampler["height"], width=sampler["width"], num_inference_steps=sampler["steps"],
                guidance_scale=s.guidance_scale, negative_prompt=s.negative_prompt,
                max_sequence_length=s.max_sequence_length, switch=method.switch, mask=method.mask,
                context=method.context, cache=method.cache, allow_unprofitable=config.allow_unprofitable,
                **frames)


def _batches(todo: list, size: int) -> list[list]:
    """``todo`` cut into runs of at most ``size`` consecutive units of one method (``sampler.batch_size``)."""
    out: list[list] = []
    for unit in todo:
        if out and len(out[-1]) < size and out[-1][0][0].name == unit[0].name:
            out[-1].append(unit)
        else:
            out.append([unit])
    return out


def _generate_batch(pipe, config: ExperimentConfig, batch: list) -> list[tuple[Any, Any, float, dict]]:
    """``(image, trace holder, latency ms, masks)`` per unit of ``batch`` (units of one method): one
    generation per unit at ``batch_size`` 1 (exactly the single-unit path), else one batched loop whose
    decisions are per sample (:func:`stitchkit.pipeline.units.generate_units`; a unit's latency is its share)."""
    method = batch[0][0]
    if len(batch) == 1:
        _, _, prompt, seed = batch[0]
        out, total_ms, masks = _generate(pipe, config, method, prompt, seed)
        return [(out.images[0], out, total_ms, masks)]

    kwargs = _call(pipe, config, method)
    switch, mask, context = kwargs.pop("switch"), kwargs.pop("mask"), kwargs.pop("context")
    units = generate_units(pipe, [u[2] for u in batch], [u[3] for u in batch], switch=switch, mask=mask,
                           context=context, **kwargs)
    return [(u.image, u, u.latency_ms, u.masks) for u in units]


def _save_unit(out_dir: Path, method: str, prompt_index: int, seed: int, output) -> None:
    """A unit's picture: the image as PNG; for a video (a list of frames) the MP4 first, then the frame
    strip as the unit's PNG (its cell in the grid, what metrics compare, what a rerun checks)."""
    if isinstance(output, (list, tuple)):
        with atomic_path(video_path(out_dir, method, prompt_index, seed), suffix=".tmp.mp4") as tmp:
            save_video(output, tmp)  # export_to_video picks the container by the name's suffix
        output = frame_strip(output)
    buffer = io.BytesIO()
    output.save(buffer, format="PNG")
    atomic_write(image_path(out_dir, method, prompt_index, seed), buffer.getvalue())


def _record(method: str, prompt_index: int, prompt: str, seed: int, out, total_ms: float, costs) -> dict[str, Any]:
    trace = out.trace
    # The latency model (Eq. 3-6) priced with the profiled costs, over this run's actual steps and masks.
    prediction = predict_from_steps(latency_steps(trace), costs)
    return {
        "method": method, "prompt_index": prompt_index, "prompt": prompt, "seed": seed,
        "latency_ms": total_ms,
        "denoise_ms": sum(r.large_ms + r.small_ms for r in trace),
        "predicted_denoise_ms": prediction.best_predicted_ms,
        "paper_predicted_denoise_ms": prediction.predicted_ms,
        "large_step_equivalents": large_step_equivalents(trace),
        "trace": [r.to_dict() for r in trace],
    }


@guarded_run  # issue 14: preflight checks, then the run folder's lock, rank 0 (stitchkit.experiments.guard)
def run_experiment(config: ExperimentConfig, *, progress: bool = True, pipe=None, force_new: bool = False,
                   announce=None) -> Path:
    """Run every unit not yet done, then (re)write the reports. Returns the folder.

    The folder's config.resolved.yaml must match this config (else refused, or with ``force_new`` a fresh
    folder is used); environment.json is rewritten whenever units are generated.

    Started by ``torchrun`` or ``accelerate launch`` (``RANK``/``WORLD_SIZE`` set), every process runs its
    share of the units (:func:`stitchkit.experiments.distributed.shard`) into the same folder and rank 0 alone
    writes the reports; a plain call never initialises torch.distributed. ``announce(line)`` (rank 0) gets
    what the run does before it starts: ``N units: K to generate, ...`` or ``nothing to generate: ...``.
    """

    world = world_from_env()
    on_cuda = config.pair.device.startswith("cuda") and config.pair.name is None
    with process_group(world, use_cuda=on_cuda) as world:
        return _run(config, world=world, progress=progress, pipe=pipe, force_new=force_new, announce=announce)


def _run(config: ExperimentConfig, *, world, progress: bool, pipe, force_new: bool, announce=None) -> Path:
    from tqdm.auto import tqdm

    main = world is None or world.is_main
    metrics = build_metrics(config)  # built (and their weights checked) before any image is generated
    config = _claim(config, world, force_new)
    if world is not None:  # each process on its own GPU; the resolved config keeps what the user wrote
        config = attrs.evolve(config, pair=attrs.evolve(config.pair, device=world.device(config.pair.device)))
    out_dir = config.output
    keys = UnitKeys(config)  # issue 14: a record counts only for the unit it was made for
    remaining = units_to_do(config, keys)  # a stale record, or one whose image does not open, is redone
    if announce is not None and main:  # the count --dry-run predicts (stitchkit.experiments.run_work)
        announce(RunWork(config=config, todo=tuple(remaining)).describe())
    failures = []  # issue 14: units stopped on NaN/inf or whose outputs could not be written (resume.py)
    if remaining:
        if main:
            write_environment(config, world_size=1 if world is None else world.world_size)
        pipe = pipe or load_pair(config)
        threads = use_threads(pipe, config)
        size = run_size(pipe, config)
        check_methods(pipe, config, size)
        todo = remaining if world is None else _share(pipe, config, size, world, remaining)
        # One untimed generation first: the first call pays for allocations and lazy initialisation
        # (the profile too would otherwise time a cold model: 44 ms against 19 ms on the shapes pair).
        _generate(pipe, config, config.methods[0], config.prompts[0], config.seeds[0])
        barrier(world)  # no rank generates while its node's profile is measured
        costs = _node_profile(pipe, config, size, world)
        bar = tqdm(total=len(todo), desc=config.name, unit="image", disable=not (progress and main))
        sampler = ran_sampler(pipe, config)  # what every unit ran with, in its record
        for batch in _batches(todo, config.sampler.batch_size):
            method = batch[0][0]
            bar.set_description(f"{config.name}: {method.name}", refresh=False)
            bar.set_postfix_str(", ".join(unit_stem(pi, seed) for _, pi, _, seed in batch), refresh=False)
            try:
                outputs = _generate_batch(pipe, config, batch)
            except NonFiniteError as err:  # issue 14: the other units go on; no record, so a rerun retries
                failures += [(method.name, pi, seed, err) for _, pi, _, seed in batch]
                bar.update(len(batch))
                continue
            for (_, pi, prompt, seed), (image, out, total_ms, masks) in zip(batch, outputs):
                record = _record(method.name, pi, prompt, seed, out, total_ms, costs)
                record["masks"] = masks
                record["sampler"] = sampler
                record["threads"], record["load"] = threads, load_average()
                record["batch_size"] = len(batch)
                record[KEY_FIELD] = keys(method.name, prompt, seed)
                try:
                    _write_unit(out_dir, method.name, pi, seed, image, record)
                except OSError as err:  # disk full, quota, I/O error: like a NaN unit, named and retried
                    failures.append((method.name, pi, seed, err))
            bar.update(len(batch))
        bar.close()  # its last line before the table, not after it
    barrier(world)  # every rank's units are on disk
    if main:
        write_report(config, metrics=metrics)
    if failures:  # issue 14: after the report of everything that finished (each rank names its own)
        raise UnitsFailed(failures)
    return out_dir


def _write_unit(out_dir: Path, method: str, prompt_index: int, seed: int, output, record: dict) -> None:
    """The unit's picture (:func:`_save_unit`), then its record (the record last: a unit is done when its
    record exists)."""
    _save_unit(out_dir, method, prompt_index, seed, output)
    atomic_write(record_path(out_dir, method, prompt_index, seed), json.dumps(record).encode())


def _claim(config: ExperimentConfig, world, force_new: bool) -> ExperimentConfig:
    """Rank 0 checks the run folder against this config and writes config.resolved.yaml; every rank gets
    the folder to run into, or the same one-line refusal (no rank is left waiting for the others)."""

    if world is None:
        return claim(config, force_new=force_new)
    answer: Any = None
    if world.is_main:
        try:
            answer = str(claim(config, force_new=force_new).output)
        except ConfigError as err:
            answer = (err.path, err.problem, err.allowed)
    answer = broadcast(world, answer)
    if isinstance(answer, tuple):
        raise ConfigError(*answer)
    return attrs.evolve(config, output=Path(answer))


def _share(pipe, config: ExperimentConfig, size, world, remaining: list) -> list:
    """This rank's units among ``remaining``: its shard of *all* units (a pure function of the unit list,
    each method's predicted cost and the world size), so any world size resumes any folder correctly."""

    weights = method_weights(pipe, config, height=size.height, width=size.width, text_tokens=size.text_tokens,
                             num_frames=size.num_frames)
    mine = shard(config.units, lambda u: weights[u[0].name], world.world_size)[world.rank]
    left = {(m.name, pi, seed) for m, pi, _, seed in remaining}
    return [u for u in mine if (u[0].name, u[1], u[3]) in left]


def _node_profile(pipe, config: ExperimentConfig, size, world):
    """The pair's costs, measured (or read from the cache) once per node by its local rank 0 and handed to
    the node's other ranks, instead of K processes timing the same device at once."""

    if world is None:
        return ensure_profile(pipe, config, size)
    costs = ensure_profile(pipe, config, size) if world.is_local_main else None
    return gather(world, costs)[world.rank - world.local_rank]
