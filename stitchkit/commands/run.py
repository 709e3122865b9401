"""``stitchkit run EXPERIMENT.yaml``: every method × prompt × seed, then the results table."""

from __future__ import annotations

import click

from stitchkit.config import ExperimentConfig
from stitchkit.experiment import run_experiment


@click.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the experiment's `output`).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--threads", default="", metavar="N",
              help="CPU threads (default: sampler.threads, else OMP_NUM_THREADS, else the pair's: one for "
                   "small models, every core for large ones).")
def command(experiment: str, output: str | None, quiet: bool, threads: str) -> None:
    """Run an experiment; a rerun resumes where the last one stopped."""
    import attrs
    from pathlib import Path

    config = ExperimentConfig.from_yaml(experiment)
    if output is not None:
        config = attrs.evolve(config, output=Path(output))
    from stitchkit.threads import parse_threads, timing_warnings

    n_threads = parse_threads(threads)
    if n_threads is not None:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, threads=n_threads))
    out_dir = run_experiment(config, progress=not quiet)
    click.echo((out_dir / "results.md").read_text().rstrip())
    from stitchkit.experiment import load_records

    for line in timing_warnings(load_records(config)):
        click.echo(line)
    click.echo(f"wrote {out_dir}/ (images/, trace.jsonl, results.md, results.csv)")
