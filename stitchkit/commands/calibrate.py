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
              help="Without --best: the setting whose predicted speedup over the large model reaches X by the "
                   "least (quality is not looked at). With --best: the best by METRIC among those near X.")
@click.option("--target-large-steps", type=float, default=None, metavar="E",
              help="The most large-step equivalents within E (machine-independent).")
@click.option("--match", "match", default=None, metavar="METHOD",
              help="Tune --method's threshold until its quality (--metric) matches METHOD's.")
@click.option("--metric", default=None, metavar="NAME", help="The quality metric --match compares.")
@click.option("--best", "best", default=None, metavar="METRIC",
              help="With a target: among the settings whose prediction reaches it within --tolerance, generate "
                   "the --candidates most promising (most large-step equivalents) on the calibration units and "
                   "keep the best by METRIC (any registered metric).")
@click.option("--candidates", "count", type=int, default=4, show_default=True, metavar="N",
              help="How many settings --best generates and scores.")
@click.option("--tolerance", type=float, default=0.1, show_default=True,
              help="--best considers predicted speedups in [X, X*(1+tolerance)] (large steps in [E*(1-tolerance), E]).")
@click.option("--json", "as_json", is_flag=True,
              help="With --best: print one JSON object, {chosen, candidates}, each with params, predicted_speedup "
                   "and the metric's value.")
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
            target_large_steps: float | None, match: str | None, metric: str | None, best: str | None,
            count: int, tolerance: float, as_json: bool, name: str | None,
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
    if (best is not None or as_json) and match is not None:
        raise ConfigError("--best" if best is not None else "--json", "goes with a target, not --match",
                          "--target-speedup X --best METRIC")
    if as_json and best is None:
        raise ConfigError("--json", "needs --best", "--target-speedup X --best METRIC --json")
    _calibrate(config, method, target_speedup, target_large_steps, match, metric, units, name, costs_from,
               best=best, count=count, tolerance=tolerance, as_json=as_json)


def _calibrate(config, method, target_speedup, target_large_steps, match, metric, units, name,
               costs_from="profile", *, best=None, count=4, tolerance=0.1, as_json=False) -> None:
    from stitchkit.calibration.naming import calibrated_name
    from stitchkit.calibration.setup import method_yaml, prepare
    from stitchkit.calibration.target import Target, search, shortest

    start = time.perf_counter()
    problem, setup = prepare(config, method, units=units, costs_from=costs_from)
    steps = setup.sampler["steps"]
    echo = (lambda *_: None) if as_json else click.echo  # --json: one JSON object, nothing else
    echo(f"{method} on {config.pair.label}: {len(setup.units)} calibration units, {steps} steps, "
         f"costs from {_SOURCES.get(problem.costs.source, problem.costs.source)}")
    if best is not None:
        _best(problem, setup, Target(kind="speedup", value=target_speedup) if target_speedup is not None
              else Target(kind="large_steps", value=target_large_steps), best, count, tolerance, as_json, name)
        return
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


def _best(problem, setup, target, metric: str, count: int, tolerance: float, as_json: bool, name) -> None:
    """``--best METRIC``: the candidates generated and scored, the chosen one's YAML (or all of it as JSON)."""
    import json

    from stitchkit.calibration.best import best_at_target
    from stitchkit.calibration.naming import calibrated_name
    from stitchkit.calibration.setup import method_yaml

    found = best_at_target(problem, setup, target, metric, count=count, tolerance=tolerance)
    if as_json:
        click.echo(json.dumps({"metric": metric, "target": {target.kind: target.value}, "tolerance": tolerance,
                               "listed": found.listed, "chosen": found.chosen.as_json(problem, metric),
                               "candidates": [c.as_json(problem, metric) for c in found.candidates]}))
        return
    click.echo(f"{found.listed} settings reach the target within {tolerance:g}; generated the {len(found.candidates)} "
               f"with the most large-step equivalents and scored {metric}:")
    for c in found.candidates:
        mark = "*" if c is found.chosen else " "
        click.echo(f" {mark} {', '.join(f'{k.label}={v:.4g}' for k, v in zip(problem.knobs, c.values))}: "
                   f"predicted {c.summary.speedup:.3f}x, {c.summary.large_step_equivalents:.2f} large-step "
                   f"equivalents, {metric} {c.score:.4g}")
    click.echo("# paste into methods (a new name: the run folder grows by this method's units):")
    name = name or calibrated_name(setup.method.name, **{("target_speedup" if target.kind == "speedup"
                                                           else "target_large_steps"): target.value})
    click.echo(method_yaml(setup, problem, found.chosen.values, name=name))


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
