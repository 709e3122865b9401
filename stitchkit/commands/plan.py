"""``stitchkit plan``: what a HybridStitch schedule should cost, from the latency model (§3.2, Eq. 3-8).

    stitchkit plan --large-ms 10 --small-ms 2.5 --steps 50 --switch-steps 10,30,40 --mask-ratios 0.4,0.2

Options are read as plain strings and parsed here, so that every refusal is one :class:`ConfigError` line
(the CLI's ``main`` prints it and exits 2). :func:`show_plan` does the work, so a later
``stitchkit plan EXPERIMENT.yaml`` form only has to build a :class:`Plan` and :class:`Costs` and call it.
"""

from __future__ import annotations

import json
import math
import warnings

import click

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import (
    Costs,
    Plan,
    Prediction,
    UnprofitablePlanWarning,
    check_profitable,
    predict,
    validate_plan,
)

__all__ = [
    "command", "format_prediction", "parse_float", "parse_floats", "parse_int", "parse_ints", "plan",
    "show_plan",
]


def _items(option: str, text: str) -> list[str]:
    """The comma-separated items of ``text``; an empty item (``1,,2``) is refused."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    for i, item in enumerate(items):
        if not item:
            raise ConfigError(option, f"item {i + 1} of {text!r} is empty", "give a comma-separated list")
    return items


def parse_float(option: str, text: str) -> float:
    """One finite number, or a one-line :class:`ConfigError` naming ``option``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(option, f"{text!r} is not a number", "give a number such as 12.5") from None
    if not math.isfinite(value):
        raise ConfigError(option, f"{text!r} is not finite", "give a finite number")
    return value


def parse_floats(option: str, text: str) -> tuple[float, ...]:
    """A comma-separated list of finite numbers (``0.4,0.2``)."""
    return tuple(parse_float(option, item) for item in _items(option, text))


def parse_int(option: str, text: str) -> int:
    """One whole number, or a one-line :class:`ConfigError` naming ``option``."""
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(option, f"{text!r} is not a whole number",
                          "give a whole number such as 50") from None


def parse_ints(option: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers (``10,30,40``)."""
    return tuple(parse_int(option, item) for item in _items(option, text))


def _parse_masked(option: str, text: str) -> tuple[tuple[float, float], ...]:
    """``RATIO:MS`` pairs (``0.1:2.1,0.2:3.1``)."""
    out = []
    for item in _items(option, text):
        ratio, sep, ms = item.partition(":")
        if not sep:
            raise ConfigError(option, f"{item!r} is not RATIO:MS", "give pairs such as 0.1:2.1,0.2:3.1")
        out.append((parse_float(option, ratio), parse_float(option, ms)))
    return tuple(out)


def format_prediction(prediction: Prediction, plan: Plan, costs: Costs) -> list[str]:
    """The human-readable lines of a prediction: the stages, then the numbers with their equations."""
    p = prediction
    lines = [f"plan: {plan.steps} steps; Ll = {costs.large_ms:g} ms, Ls = {costs.small_ms:g} ms"
             + (" (an estimate from FLOPs)" if costs.source == "flops-estimate" else "")]
    bounds = [0, *plan.switch_steps, plan.steps]
    names = ["large", *(f"hybrid M={m:g}" for m in plan.mask_ratios), "small"]
    for name, start, stop in zip(names, bounds, bounds[1:]):
        if stop > start:
            count = stop - start
            lines.append(f"  steps {start}-{stop - 1}: {name} ({count} step{'s' if count != 1 else ''})")
    lines += [
        f"large-only ms:   {p.large_only_ms:10.2f}   (T · Ll)",
        f"hybrid large ms: {p.hybrid_large_ms:10.2f}   (Eq. 3)",
        f"hybrid small ms: {p.hybrid_small_ms:10.2f}   (Eq. 4)",
        f"predicted ms:    {p.predicted_ms:10.2f}",
        f"saving ms:       {p.saving_ms:10.2f}   (Eq. 5)",
        f"speedup:         {p.speedup:10.3f}x",
    ]
    if p.refined:
        lines += [
            "refined model (masked steps at the profiled Ll(M)):",
            f"hybrid large ms: {p.refined_hybrid_large_ms:10.2f}",
            f"predicted ms:    {p.refined_predicted_ms:10.2f}",
            f"saving ms:       {p.refined_saving_ms:10.2f}",
            f"speedup:         {p.refined_speedup:10.3f}x",
        ]
    return lines


def show_plan(plan: Plan, costs: Costs, *, as_json: bool = False,
              allow_unprofitable: bool = False) -> Prediction:
    """Validate ``plan`` (refusing it as a :class:`ConfigError` unless ``allow_unprofitable`` lets Eq. 6-8
    breaches through as warnings), predict its cost and print it; with ``as_json`` the last line printed is
    one JSON object (:meth:`Prediction.to_dict`)."""
    validate_plan(plan, costs)
    with warnings.catch_warnings():  # printed below as one line each, not as Python warnings
        warnings.simplefilter("ignore", UnprofitablePlanWarning)
        breaches = check_profitable(plan, costs, allow_unprofitable=allow_unprofitable)
    prediction = predict(plan, costs)
    for line in format_prediction(prediction, plan, costs):
        click.echo(line)
    for breach in breaches:
        click.echo(f"warning: {breach}", err=True)
    if as_json:
        click.echo(json.dumps(prediction.to_dict()))
    return prediction


def _show_experiment(path: str, as_json: bool, threads: str = "") -> None:
    import attrs
    import torch

    from stitchkit.cost.threads import parse_threads
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.plan import plan_experiment
    from stitchkit.experiments.preflight import check_pair

    config = ExperimentConfig.from_yaml(path)
    check_pair(config)  # folders and device, as `run` checks them before loading the pair
    n_threads = parse_threads(threads)  # as `run --threads`: the profile is keyed by the thread count
    if n_threads is not None:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, threads=n_threads))
    costs, plans = plan_experiment(config)
    unit = "ms" if costs.source != "flops-estimate" else "large steps (FLOPs estimate: no profile cached)"
    click.echo(f"costs ({costs.source}, {torch.get_num_threads()} thread(s)): Ll = {costs.large_ms:.4g}, "
               f"Ls = {costs.small_ms:.4g} {unit}")
    click.echo(f"{'method':<22} {'basis':<26} {'switch steps':<14} {'predicted':>10} {'speedup':>8} {'refined':>8}")
    for p in plans:
        pred = p.prediction
        refined = "-" if pred.refined_speedup is None else f"{pred.refined_speedup:.2f}x"
        steps = ",".join(map(str, p.switch_steps)) or "-"
        click.echo(f"{p.method:<22} {p.basis:<26} {steps:<14} {pred.predicted_ms:>10.4g} "
                   f"{pred.speedup:>7.2f}x {refined:>8}")
    if as_json:
        click.echo(json.dumps([{"method": p.method, "basis": p.basis, "switch_steps": list(p.switch_steps),
                                **p.prediction.to_dict()} for p in plans]))


@click.command("plan")
@click.argument("experiment", required=False)
@click.option("--large-ms", metavar="MS", help="L_l: one step of the large model, in ms.")
@click.option("--small-ms", metavar="MS", help="L_s: one step of the small model, in ms.")
@click.option("--steps", metavar="T", help="T: the number of denoising steps.")
@click.option("--switch-steps", metavar="T1,...,Tn+1",
              help="The steps where the stage changes: 0 < T1 < ... < Tn+1 <= T.")
@click.option("--mask-ratios", default="", metavar="M1,...,Mn",
              help="The large model's share of the image tokens in each hybrid stage, falling (Eq. 8).")
@click.option("--masked-ms", default="", metavar="M:MS,...",
              help="Measured masked costs Ll(M) (from `stitchkit profile`) for the refined prediction.")
@click.option("--allow-unprofitable", is_flag=True,
              help="Warn instead of refusing a plan that breaks Eq. 6-8.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object of the numbers.")
@click.option("--threads", default="", metavar="N",
              help="With EXPERIMENT: CPU threads, chosen as `run` chooses them (the profile is keyed by them).")
def plan(experiment: str | None, large_ms: str | None, small_ms: str | None, steps: str | None,
         switch_steps: str | None, mask_ratios: str, masked_ms: str, allow_unprofitable: bool,
         as_json: bool, threads: str) -> None:
    """Predict the latency of a HybridStitch plan with the paper's model (§3.2, Eq. 3-8).

    With EXPERIMENT (a YAML file): every method of it, costed from the pair's profile; adaptive methods
    per plausible first switch step, or from the traces of a previous run."""
    if experiment is not None:
        _show_experiment(experiment, as_json, threads)
        return
    for option, value in (("--large-ms", large_ms), ("--small-ms", small_ms), ("--steps", steps),
                          ("--switch-steps", switch_steps)):
        if value is None:
            raise ConfigError(option, "missing", "give it, or an EXPERIMENT.yaml to plan every method of")
    the_plan = Plan(steps=parse_int("--steps", steps),
                    switch_steps=parse_ints("--switch-steps", switch_steps),
                    mask_ratios=parse_floats("--mask-ratios", mask_ratios))
    costs = Costs(large_ms=parse_float("--large-ms", large_ms), small_ms=parse_float("--small-ms", small_ms),
                  masked_ms=_parse_masked("--masked-ms", masked_ms))
    show_plan(the_plan, costs, as_json=as_json, allow_unprofitable=allow_unprofitable)


command = plan
