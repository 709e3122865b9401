"""``stitchkit run EXPERIMENT.yaml``: every method × prompt × seed, then the results table."""

from __future__ import annotations

import click

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.runner import run_experiment


@click.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the experiment's `output`).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(experiment: str, output: str | None, quiet: bool) -> None:
    """Run an experiment; a rerun resumes where the last one stopped."""
    import attrs
    from pathlib import Path

    config = ExperimentConfig.from_yaml(experiment)
    if output is not None:
        config = attrs.evolve(config, output=Path(output))
    out_dir = run_experiment(config, progress=not quiet)
    click.echo((out_dir / "results.md").read_text().rstrip())
    click.echo(f"wrote {out_dir}/ (images/, trace.jsonl, results.md, results.csv)")
