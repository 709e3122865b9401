"""``stitchkit calibrate --method M --target-...``: a method's thresholds for a target, on the real pair.

Builds the :class:`stitchkit.calibration.target.Problem` for one method of an experiment: the first ``units`` prompt ×
seed units at the experiment's sampler settings, the pair's profiled costs (as ``stitchkit run`` prices its
rows), and a recorder that runs the method's stages on a fixed switch prefix
(:class:`stitchkit.calibration.replay.ScheduledPolicy`) with the method's own mask and context. The search then
replays every candidate on those runs (:mod:`stitchkit.calibration.target`); only the runs a candidate actually needs
are recorded.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import attrs
import torch

from stitchkit.calibration.replay import TraceStore, handed_from_trace, scheduled_like
from stitchkit.calibration.target import Problem, knobs_of, with_values
from stitchkit.cost.latency import Costs, UnprofitablePlanWarning
from stitchkit.cost.loop_costs import costs_from_traces, spread_transitions
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig, MethodConfig
from stitchkit.experiments.pair_setup import ensure_profile, load_pair, ran_sampler, run_size, use_threads
from stitchkit.loop.method_checks import uses_mask
from stitchkit.registry import DEFAULT_CONTEXT, DEFAULT_MASK


def find_method(config: ExperimentConfig, name: str, registry, flag: str = "--method") -> MethodConfig:
    """The experiment's method called ``name``, else the switch policy or preset of that name."""
    for method in config.methods:
        if method.name == name:
            return method
    if name in registry.entries["switch"]:
        return MethodConfig(name=name, switch=name)
    known = ", ".join(m.name for m in config.methods)
    raise ConfigError(flag, f"unknown method {name!r}", f"a method of the experiment ({known}) or a switch policy")


def switch_mapping(switch: Any) -> dict[str, Any]:
    """A method's switch as a ``{"kind": ..., **params}`` mapping."""
    return {"kind": switch} if isinstance(switch, str) else dict(switch)


@attrs.define(kw_only=True)
class Setup:
    """One method of one experiment, ready to record runs of."""

    pipe: Any
    config: ExperimentConfig
    method: MethodConfig
    base: dict[str, Any]
    mask: Any
    context: Any
    sampler: dict[str, Any]
    units: tuple[tuple[str, int], ...]
    generations: int = 0
    generation_s: float = 0.0

    def generate(self, unit: tuple[str, int], switch: Any, *, output_type: str = "latent"):
        """One generation of ``unit`` with ``switch`` (a policy or spec), the method's mask and context."""
        prompt, seed = unit
        s = self.sampler
        # The method's mask, where this run's switch policy masks at all (the large-only reference does not).
        mask = self.mask if uses_mask(self.pipe.registry.create("switch", switch)[0]) else None
        start = time.perf_counter()
        with warnings.catch_warnings():  # the method was checked (Eq. 7) once, up front
            warnings.simplefilter("ignore", UnprofitablePlanWarning)
            out = self.pipe(prompt, height=s["height"], width=s["width"], num_inference_steps=s["steps"],
                            guidance_scale=s["guidance_scale"], negative_prompt=self.config.sampler.negative_prompt,
                            max_sequence_length=self.config.sampler.max_sequence_length,
                            generator=torch.Generator(device="cpu").manual_seed(seed), output_type=output_type,
                            switch=switch, mask=mask, context=self.context, allow_unprofitable=True,
                            num_frames=s.get("num_frames"))
        self.generation_s += time.perf_counter() - start
        self.generations += 1
        return out


def prepare(config: ExperimentConfig, method_name: str, *, units: int, pipe=None,
            costs: Costs | None = None, costs_from: str = "profile") -> tuple[Problem, Setup]:
    """The search problem for ``method_name`` over the first ``units`` units of ``config``. Without
    ``costs``, they come from the pair's profile (``costs_from="profile"``, as ``stitchkit run`` prices its
    rows) or from the loop's own step timings over the calibration units (``"loop"``:
    :mod:`stitchkit.cost.loop_costs`)."""

    if units < 1:
        raise ConfigError("--units", f"must be at least 1, got {units}")
    if costs_from not in ("profile", "loop"):
        raise ConfigError("--costs", f"unknown source {costs_from!r}", "profile or loop")
    pipe = pipe or load_pair(config)
    use_threads(pipe, config)
    registry = pipe.registry
    method = find_method(config, method_name, registry)
    base = switch_mapping(method.switch)
    policy, implied = registry.create("switch", base, path="--method")
    knobs = knobs_of(policy)
    size = run_size(pipe, config)
    pipe.check_plan(method.switch, context=method.context, height=size.height, width=size.width,
                    text_tokens=size.text_tokens, guided=size.guided, allow_unprofitable=config.allow_unprofitable,
                    path="--method", num_frames=size.num_frames)
    setup = Setup(pipe=pipe, config=config, method=method, base=base,
                  mask=method.mask if method.mask is not None else implied.get("mask", DEFAULT_MASK),
                  context=method.context if method.context is not None else implied.get("context", DEFAULT_CONTEXT),
                  sampler=ran_sampler(pipe, config),
                  units=tuple((p, s) for p in config.prompts for s in config.seeds)[:units])
    if costs is None:
        setup.generate(setup.units[0], "large")  # warm-up, as stitchkit run does before profiling
        if costs_from == "loop":
            # every calibration unit, not one: a masked step's cost moves by ±15 % from one run to the next
            stages = scheduled_like(policy, spread_transitions(setup.sampler["steps"], len(policy.stages) - 1))
            costs = costs_from_traces([setup.generate(unit, spec).trace for unit in setup.units
                                       for spec in ("large", stages)])
        else:
            costs = ensure_profile(pipe, config, size)
    context_policy, _ = registry.create("context", setup.context)

    def record(unit, prefix):
        return handed_from_trace(setup.generate(unit, scheduled_like(policy, prefix)).trace)

    problem = Problem(
        build=lambda values: registry.create("switch", {**base, **with_values(knobs, values)}, path="--method")[0],
        knobs=knobs, store=TraceStore(record), units=setup.units, num_steps=setup.sampler["steps"],
        num_tokens=pipe.adapter.num_tokens(height=size.height, width=size.width, num_frames=size.num_frames),
        costs=costs,
        computes_all_tokens=bool(getattr(context_policy, "computes_all_tokens", False)))
    return problem, setup


def method_yaml(setup: Setup, problem: Problem, values, name: str | None = None) -> str:
    """The method line to paste into the experiment's ``methods:`` (named ``name``, else as the method)."""
    import yaml

    switch = {**setup.base, **with_values(problem.knobs, values)}
    item: dict[str, Any] = {"name": name or setup.method.name, "switch": switch}
    for key in ("mask", "context"):
        if getattr(setup.method, key) is not None:
            item[key] = getattr(setup.method, key)
    return "- " + yaml.safe_dump(item, default_flow_style=True, sort_keys=False, width=10_000).strip()
