"""``stitchkit run EXPERIMENT.yaml``: every method × prompt × seed, then the reports."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.distributed import world_from_env
from stitchkit.experiments.runner import run_experiment
from stitchkit.experiments.summary import summary_table


def closing_line(out_dir: Path, written: list[Path]) -> str:
    """``wrote runs/quickstart/: results.md, ..., images/, records/`` with a normalised, relative path."""
    folder = Path(os.path.normpath(os.path.abspath(out_dir)))
    try:
        shown = os.path.relpath(folder)
        shown = shown if not shown.startswith("..") else str(folder)
    except ValueError:  # another drive
        shown = str(folder)
    names = [p.name for p in written if p.exists()]
    extra = [f"{d}/" for d in ("images", "records") if (folder / d).is_dir()]
    extra += [f for f in ("config.resolved.yaml", "environment.json") if (folder / f).exists()]
    return f"wrote {shown}/: " + ", ".join(names + extra)


def dry_run(config: ExperimentConfig, *, force_new: bool = False) -> None:
    """The checks ``run`` makes before loading a model, the units it will generate and each method's
    speedup predicted by the latency model; generates nothing (:mod:`stitchkit.experiments.run_work`)."""
    from stitchkit.experiments.plan import plan_experiment
    from stitchkit.experiments.run_work import run_work

    work = run_work(config, force_new=force_new)  # preflight (pair, device, prompts) and resume keys, as run
    config = work.config
    click.echo(f"{config.name}: {len(config.methods)} methods × {len(config.prompts)} prompts × "
               f"{len(config.seeds)} seed(s) = {work.describe()}")
    costs, plans = plan_experiment(config)
    by_method: dict[str, list] = {}
    for plan in plans:
        by_method.setdefault(plan.method, []).append(plan)
    import torch

    source = "profiled costs" if costs.source != "flops-estimate" else "FLOPs estimate (no profile cached)"
    source += f", {torch.get_num_threads()} thread(s)"
    click.echo(f"predicted speedup vs large-only (latency model, Eq. 3-6, {source}):")
    width = max(len(m.name) for m in config.methods)
    for method in config.methods:
        speedups = [p.prediction.refined_speedup or p.prediction.speedup for p in by_method.get(method.name, [])]
        basis = by_method[method.name][0].basis if len(speedups) == 1 else "first switch at 10 %…60 % of the steps"
        shown = f"{speedups[0]:.2f}×" if len(speedups) == 1 else f"{min(speedups):.2f}×–{max(speedups):.2f}×"
        params = ", ".join(f"{k}={v}" for k, v in method.params.items())
        click.echo(f"  {method.name:<{width}}  {shown:>13}  ({basis}){'  ' + params if params else ''}")
    click.echo("units to generate:" if work.todo else "units to generate: none")
    for m, pi, prompt, s in work.todo:
        click.echo(f"  {m.name}  p{pi:04d}-s{s}  {prompt}")


@click.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the experiment's `output`).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Print the expanded units and predicted speedups; run nothing.")
@click.option("--force-new", is_flag=True,
              help="If the output folder holds a run of another configuration, continue into a new folder.")
@click.option("--threads", default="", metavar="N",
              help="CPU threads (default: sampler.threads, else OMP_NUM_THREADS, else the pair's: one for "
                   "small models, every core for large ones).")
def command(experiment: str, output: str | None, quiet: bool, dry_run: bool, force_new: bool, threads: str) -> None:
    """Run an experiment; a rerun resumes where the last one stopped."""
    import attrs

    from stitchkit.experiments.reports import REPORT_FILES

    config = ExperimentConfig.from_yaml(experiment)
    if output is not None:
        config = attrs.evolve(config, output=Path(output))
    from stitchkit.cost.threads import parse_threads, timing_warnings

    n_threads = parse_threads(threads)
    if n_threads is not None:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, threads=n_threads))
    if dry_run:
        globals()["dry_run"](config, force_new=force_new)
        return
    announce = functools.partial(click.echo, err=True)  # what the run does, before the bars start
    out_dir = run_experiment(config, progress=not quiet, force_new=force_new, announce=announce)
    world = world_from_env()
    if world is not None and not world.is_main:  # a data-parallel rank: rank 0 reports for the job
        return
    click.echo(summary_table(out_dir))  # narrower than results.md: the full table is in the file
    click.echo(f"full table (latency, predicted time and its error, sampler): {out_dir / 'results.md'}")
    from stitchkit.experiments.store import compact_records

    for line in timing_warnings(compact_records(attrs.evolve(config, output=out_dir))):
        click.echo(line)
    click.echo(closing_line(out_dir, [out_dir / name for name in REPORT_FILES]))
