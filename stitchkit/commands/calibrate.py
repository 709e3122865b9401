"""``stitchkit calibrate EXPERIMENT.yaml``: the D_t distribution per step of large-only runs."""

from __future__ import annotations

import click
import numpy as np

from stitchkit.commands.plan import parse_floats


@click.command("calibrate")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--thresholds", default="", metavar="T1,T2,...",
              help="Also print, per threshold, where D_t (x0) first falls below it (median and p10-p90).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(experiment: str, thresholds: str, quiet: bool) -> None:
    """Run the large model alone over the experiment's prompts and print D_t quantiles per step."""
    from stitchkit.calibrate import collect_changes, first_step_below, quantile_table
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.runner import load_pair

    config = ExperimentConfig.from_yaml(experiment)
    wanted = parse_floats("--thresholds", thresholds)
    changes = collect_changes(load_pair(config), config, progress=not quiet)
    runs = next(iter(changes.values())).shape[0]
    click.echo(f"{config.pair.label}: {runs} large-only runs, {config.sampler.steps} steps")
    for line in quantile_table(changes):
        click.echo(line)
    for threshold in wanted:
        steps = first_step_below(changes["x0"], threshold)
        p10, p50, p90 = np.quantile(steps, (0.1, 0.5, 0.9))
        click.echo(f"x0 D_t < {threshold:g}: first at step {p50:.0f} (median; p10 {p10:.0f}, p90 {p90:.0f})")
