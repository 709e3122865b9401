"""Predicted latency of every method of an experiment, before (or after) running it (paper §3.2, Eq. 3-6).

Each method's switch policy is driven step by step without any D_t. A policy that walks through all its
stages that way (``large``, ``small``, ``t-stitch``) has a fixed schedule, and that schedule is priced.
An adaptive one (``srdiffusion``, ``hybridstitch``) switches where D_t says, so it is priced for each
plausible first switch step (10 %…60 % of the steps, later stages sharing the rest evenly); once the
experiment has run, its recorded traces are priced instead: the steps and masks that really happened.
Costs are the pair's cached profile, else a FLOPs estimate of the two configs (in large steps, said so).
"""

from __future__ import annotations

from typing import Any

import attrs

from stitchkit.cost.latency import Costs, Prediction, predict_from_steps
from stitchkit.cost.profile import estimate_costs_from_configs
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.pair_setup import load_pair, run_size, use_threads
from stitchkit.experiments.store import current_records
from stitchkit.loop.trace import latency_steps
from stitchkit.protocols import LoopState
from stitchkit.registry import DEFAULT_CONTEXT, Registry

#: First switch steps tried for adaptive policies, as fractions of the step count.
PLAUSIBLE_FIRST_SWITCH = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@attrs.frozen(kw_only=True)
class MethodPlan:
    method: str
    basis: str  # "fixed schedule", "first switch at step k", "N run traces"
    switch_steps: tuple[int, ...]
    prediction: Prediction


def _stage_step(kind: str, ratio: float | None) -> tuple[float, bool]:
    """(large fraction, small ran) of one step of a stage kind."""
    return {"large": (1.0, False), "small": (0.0, True)}.get(kind, (ratio or 0.0, True))


def _all_tokens(steps: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """Hybrid steps priced as the large model on every token, beside the small one."""
    return [(1.0, ran) if 0.0 < f < 1.0 else (f, ran) for f, ran in steps]


def _simulate(policy: Any, steps: int, num_tokens: int,
              change: float | None = None) -> tuple[list[tuple[float, bool]], list[int]]:
    """Drive ``policy`` with no D_t at all (the schedule of a policy that does not read it), or with the
    same ``change`` handed at every step from the second on."""
    import torch  # deferred: planning a fixed schedule needs no tensors

    policy.reset(steps)
    out, stages = [], []
    for i in range(steps):
        handed = None if change is None or i == 0 else torch.tensor([change])
        d = policy.decide(LoopState(step=i, num_steps=steps, timestep=0.0, sigma=1.0 - i / steps,
                                    num_tokens=num_tokens, grid=(1, num_tokens), batch_size=1, change=handed))
        out.append((1.0 if d.large and not d.hybrid else (d.mask_ratio if d.hybrid else 0.0), d.small))
        stages.append(d.stage)
    return out, stages


def _switch_steps(stages: list[int]) -> tuple[int, ...]:
    return tuple(i for i in range(1, len(stages)) if stages[i] != stages[i - 1])


def is_fixed_schedule(policy: Any, steps: int, num_tokens: int) -> bool:
    """Whether ``policy`` walks through all its stages without any D_t (``large``, ``t-stitch``)."""
    _, stages = _simulate(policy, steps, num_tokens)
    return len(set(stages)) >= max(1, len(tuple(getattr(policy, "stages", ()) or ())))


def plan_method(policy: Any, name: str, steps: int, num_tokens: int, costs: Costs, *,
                full_large: bool = False) -> list[MethodPlan]:
    """Predictions for one switch policy; ``full_large``: its hybrid steps run the large model on every
    token (the FullLarge context), so they are priced as full large steps."""
    kinds = tuple(getattr(policy, "stages", ()) or ())
    if "corrector" in kinds:  # its anchors follow D_t: the two ends of what it may do
        plans = []
        for basis, change in (("an anchor every step", None), ("fewest anchors (no change)", 0.0)):
            simulated, stages = _simulate(policy, steps, num_tokens, change)
            plans.append(MethodPlan(method=name, basis=basis, switch_steps=_switch_steps(stages),
                                    prediction=predict_from_steps(simulated, costs)))
        return plans
    simulated, stages = _simulate(policy, steps, num_tokens)
    if len(set(stages)) >= max(1, len(kinds)):  # visited every stage without D_t: a fixed schedule
        simulated = _all_tokens(simulated) if full_large else simulated
        return [MethodPlan(method=name, basis="fixed schedule", switch_steps=_switch_steps(stages),
                           prediction=predict_from_steps(simulated, costs))]
    ratios = list(getattr(policy, "mask_ratios", ()) or ())
    plans = []
    for fraction in PLAUSIBLE_FIRST_SWITCH:
        first = max(1, round(fraction * steps))
        rest = len(kinds) - 1
        bounds = [first + round((steps - first) * j / rest) for j in range(rest)] + [steps]
        per_step: list[tuple[float, bool]] = []
        hybrid = iter(ratios)
        start = 0
        for kind, end in zip(kinds, bounds):
            step = _stage_step(kind, next(hybrid) if kind == "hybrid" else None)
            per_step += [step] * (end - start)
            start = end
        per_step = _all_tokens(per_step) if full_large else per_step
        plans.append(MethodPlan(method=name, basis=f"first switch at step {first}",
                                switch_steps=tuple(bounds[:-1]), prediction=predict_from_steps(per_step, costs)))
    return plans


def plan_from_records(name: str, records: list[dict], costs: Costs) -> MethodPlan:
    """The prediction for what the runs really did, averaged over their traces."""
    predictions = [predict_from_steps(latency_steps(r["trace"]), costs) for r in records]
    mean = {f.name: (None if any(getattr(p, f.name) is None for p in predictions)
                     else sum(getattr(p, f.name) for p in predictions) / len(predictions))
            for f in attrs.fields(Prediction)}
    return MethodPlan(method=name, basis=f"{len(records)} run traces", switch_steps=(),
                      prediction=Prediction(**mean))


def _records(config: ExperimentConfig, method: str) -> list[dict]:
    """The method's current records (a stale one, written for another configuration, is not counted)."""
    return [r for _, r in current_records(config, methods=[m for m in config.methods if m.name == method])]


def experiment_costs(config: ExperimentConfig) -> tuple[Costs, int]:
    """The pair's costs at the experiment's size (profile, else FLOPs estimate) and its image-token count.

    Threads are set first, as ``run`` sets them (:func:`~stitchkit.experiments.pair_setup.use_threads`):
    a CPU profile is keyed by its thread count, so ``plan`` and ``--dry-run`` read the profile ``run`` reads."""
    pipe = load_pair(config)
    use_threads(pipe, config)
    size = run_size(pipe, config)
    costs = pipe.costs(height=size.height, width=size.width, text_tokens=size.text_tokens, guided=size.guided,
                       num_frames=size.num_frames)
    return costs, pipe.adapter.num_tokens(height=size.height, width=size.width, num_frames=size.num_frames)


def plan_experiment(config: ExperimentConfig, registry: Registry | None = None) -> tuple[Costs, list[MethodPlan]]:
    registry = registry or config.registry
    costs, num_tokens = experiment_costs(config)
    plans: list[MethodPlan] = []
    for method in config.methods:
        records = _records(config, method.name)
        if records:
            plans.append(plan_from_records(method.name, records, costs))
        else:
            policy, implied = registry.create("switch", method.switch)
            context, _ = registry.create("context", method.context or implied.get("context", DEFAULT_CONTEXT))
            plans += plan_method(policy, method.name, config.sampler.steps, num_tokens, costs,
                                 full_large=getattr(context, "computes_all_tokens", False))
    return costs, plans


def method_weights(pipe, config: ExperimentConfig, *, height: int, width: int, text_tokens: int,
                   registry: Registry | None = None, num_frames: int | None = None) -> dict[str, float]:
    """Each method's predicted denoising cost per unit, in large-model steps, from the two transformer
    configs' FLOPs only (Eq. 3-5 over :func:`plan_method`'s schedules, averaged over the plausible first
    switches of an adaptive method). Never from a cached profile: data-parallel ranks shard units by these
    weights, and every rank must compute the same split whatever its machine's cache holds."""

    registry = registry or pipe.registry
    num_tokens = pipe.adapter.num_tokens(height=height, width=width, num_frames=num_frames)
    costs = estimate_costs_from_configs(pipe.adapter.large_transformer.config, pipe.small.config, num_tokens,
                                        text_tokens, flops=pipe.family.flops)
    weights = {}
    for method in config.methods:
        policy, implied = registry.create("switch", method.switch)
        context, _ = registry.create("context", method.context or implied.get("context", DEFAULT_CONTEXT))
        plans = plan_method(policy, method.name, config.sampler.steps, num_tokens, costs,
                            full_large=getattr(context, "computes_all_tokens", False))
        weights[method.name] = sum(p.prediction.predicted_ms for p in plans) / len(plans)
    return weights

