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
@click.option("--threads", default="", metavar="N",
              help="CPU threads (default: sampler.threads, else OMP_NUM_THREADS, else the pair's).")
def command(experiment: str, thresholds: str, quiet: bool, threads: str) -> None:
    """Run the large model alone over the experiment's prompts and print D_t quantiles per step."""
    from stitchkit.calibrate import collect_changes, first_step_below, quantile_table
    from stitchkit.config import ExperimentConfig
    import attrs

    from stitchkit.experiment import load_pair, use_threads
    from stitchkit.threads import parse_threads

    config = ExperimentConfig.from_yaml(experiment)
    wanted = parse_floats("--thresholds", thresholds)
    n_threads = parse_threads(threads)
    if n_threads is not None:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, threads=n_threads))
    pipe = load_pair(config)
    use_threads(pipe, config)
    changes = collect_changes(pipe, config, progress=not quiet)
    runs = next(iter(changes.values())).shape[0]
    click.echo(f"{config.pair.label}: {runs} large-only runs, {config.sampler.steps} steps")
    for line in quantile_table(changes):
        click.echo(line)
    for threshold in wanted:
        steps = first_step_below(changes["x0"], threshold)
        p10, p50, p90 = np.quantile(steps, (0.1, 0.5, 0.9))
        click.echo(f"x0 D_t < {threshold:g}: first at step {p50:.0f} (median; p10 {p10:.0f}, p90 {p90:.0f})")
