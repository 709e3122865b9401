"""``stitchkit calibrate EXPERIMENT.yaml``: the D_t distribution per step of large-only runs, or, with
``--method``, the method's thresholds for a target speedup, large-step budget or quality."""

from __future__ import annotations

import time

import click
import numpy as np

from stitchkit.commands.plan import parse_floats
from stitchkit.errors import ConfigError


@click.command("calibrate")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--thresholds", default="", metavar="T1,T2,...",
              help="Also print, per threshold, where D_t (x0) first falls below it (median and p10-p90).")
@click.option("--method", "method", default=None, metavar="NAME",
              help="Calibrate this method (a method of the experiment, or a switch policy / preset name).")
@click.option("--target-speedup", type=float, default=None, metavar="X",
              help="The smallest predicted speedup over the large model that reaches X.")
@click.option("--target-large-steps", type=float, default=None, metavar="E",
              help="The most large-step equivalents within E (machine-independent).")
@click.option("--match", "match", default=None, metavar="METHOD",
              help="Tune --method's threshold until its quality (--metric) matches METHOD's.")
@click.option("--metric", default=None, metavar="NAME", help="The quality metric --match compares.")
@click.option("--name", "name", default=None, metavar="NAME",
              help="The method's name in the printed YAML line (default: --method's with the target, e.g. "
                   "hybridstitch-30@1.5x).")
@click.option("--units", type=int, default=8, show_default=True,
              help="Calibration units: the first N prompt x seed pairs of the experiment.")
@click.option("--costs", "costs_from", type=click.Choice(["profile", "loop"]), default="profile", show_default=True,
              help="Price steps with the pair's profile, or with the loop's own step timings on the first unit "
                   "(a large-only run and one of the method's stages): the clock a measured run is judged by.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--threads", default="", metavar="N",
              help="CPU threads (default: sampler.threads, else OMP_NUM_THREADS, else the pair's).")
def command(experiment: str, thresholds: str, method: str | None, target_speedup: float | None,
            target_large_steps: float | None, match: str | None, metric: str | None, name: str | None,
            units: int, costs_from: str, quiet: bool, threads: str) -> None:
    """Without --method: run the large model alone over the experiment's prompts and print D_t quantiles
    per step. With --method: search its thresholds on replayed traces and print the YAML to paste."""
    import attrs

    from stitchkit.calibration.target import check_goal
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.cost.threads import parse_threads

    config = ExperimentConfig.from_yaml(experiment)
    n_threads = parse_threads(threads)
    if n_threads is not None:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, threads=n_threads))
    if method is None:
        if target_speedup is not None or target_large_steps is not None or match is not None:
            raise ConfigError("--method", "missing", "name the method to calibrate")
        _quantiles(config, thresholds, quiet)
        return
    goals = [g for g in (target_speedup, target_large_steps, match) if g is not None]
    if len(goals) != 1:
        raise ConfigError("--method", "needs exactly one goal",
                          "--target-speedup X, --target-large-steps E, or --match METHOD --metric NAME")
    check_goal("--target-speedup", target_speedup)
    check_goal("--target-large-steps", target_large_steps)
    if (match is None) != (metric is None):
        raise ConfigError("--metric" if metric is None else "--match", "missing", "--match and --metric go together")
    _calibrate(config, method, target_speedup, target_large_steps, match, metric, units, name, costs_from)


def _calibrate(config, method, target_speedup, target_large_steps, match, metric, units, name,
               costs_from="profile") -> None:
    from stitchkit.calibration.naming import calibrated_name
    from stitchkit.calibration.setup import method_yaml, prepare
    from stitchkit.calibration.target import Target, search, shortest

    start = time.perf_counter()
    problem, setup = prepare(config, method, units=units, costs_from=costs_from)
    steps = setup.sampler["steps"]
    click.echo(f"{method} on {config.pair.label}: {len(setup.units)} calibration units, {steps} steps, "
               f"costs from {_SOURCES.get(problem.costs.source, problem.costs.source)}")
    if match is not None:
        from stitchkit.calibration.match import match_quality

        found, mine, theirs = match_quality(problem, setup, match, metric)
        click.echo(f"quality: {metric} {mine:.4g} against {match}'s {theirs:.4g} on the same units")
        goal = f"{metric} at least {match}'s"
    else:
        target = (Target(kind="speedup", value=target_speedup) if target_speedup is not None
                  else Target(kind="large_steps", value=target_large_steps))
        found = search(problem, target)
        goal = (f"predicted speedup >= {target.value:g}x" if target.kind == "speedup"
                else f"large-step equivalents <= {target.value:g}")
    values = shortest(problem, found.values)
    summary = problem.summary(values)
    firsts = [t[0] if t else steps for t in summary.transitions]
    elapsed = time.perf_counter() - start
    per_run = setup.generation_s / max(1, setup.generations)
    full_units = len(config.prompts) * len(config.seeds)
    click.echo(f"goal: {goal}")
    click.echo(f"found: {', '.join(f'{k.label}={v:g}' for k, v in zip(problem.knobs, values))}: predicted "
               f"speedup {summary.speedup:.3f}x, {summary.large_step_equivalents:.2f} large-step equivalents, "
               f"first switch at step {np.median(firsts):.0f} (median)")
    click.echo(f"calibration: {problem.store.runs} recorded runs ({setup.generations} generations) in {elapsed:.1f} s; "
               f"one full run of the experiment's {full_units} units is about {full_units * per_run:.1f} s "
               f"({per_run:.2f} s per generation measured here)")
    click.echo("# paste into methods (a new name: the run folder grows by this method's units):")
    name = name or calibrated_name(setup.method.name, target_speedup=target_speedup,
                                   target_large_steps=target_large_steps, match=match)
    click.echo(method_yaml(setup, problem, values, name=name))


_SOURCES = {"profile": "a profile", "loop": "the loop's own step timings"}


def _quantiles(config, thresholds: str, quiet: bool) -> None:
    from stitchkit.calibration.changes import collect_changes, first_step_below, quantile_table
    from stitchkit.experiments.pair_setup import load_pair, use_threads

    wanted = parse_floats("--thresholds", thresholds)
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
