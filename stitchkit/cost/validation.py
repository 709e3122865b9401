"""Check a method against the latency model before anything runs (paper §3.2, Eq. 6-8).

A hybrid stage pays off only if a masked large step plus a small step costs less than a large step
(Eq. 6), which bounds the first mask ratio (Eq. 7: M_1 < 1 − L_s/L_l), and masks must shrink (Eq. 8). The
A context provider whose hybrid step runs the large model on every token (``computes_all_tokens``, the
FullLarge ablation) is priced as such: its hybrid step costs ``L_l + L_s`` (Eq. 6 with ``M = 1``), which
is never below ``L_l``, so Eq. 7 (``1 < 1 − L_s/L_l``) fails for every pair: such a method runs only with
``allow_unprofitable`` (it is an ablation, not an accelerator). The
cost ratio comes from the pair's cached profile (``stitchkit profile``) or, when there is none, from the
two transformer configs' FLOPs at the requested size, and the error says which.
"""

from __future__ import annotations

import warnings
from typing import Any

import attrs

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import Costs, Plan, UnprofitablePlanWarning, check_profitable
from stitchkit.cost.profile import ProfileKey, cpu_threads, estimate_costs_from_configs, load_profile


def pair_costs(*, pair_id: str, large_config: Any, small_config: Any, height: int, width: int, num_tokens: int,
               text_tokens: int, batch: int, dtype: str, device: str, flops=None, num_frames: int | None = None) -> Costs:
    """The pair's profiled costs at this size, else an estimate from the configs' FLOPs (``flops``: the model
    family's FLOP model, :attr:`stitchkit.families.Family.flops`; the default is the joint-attention one).
    ``num_frames``: a video's frame count (part of the profile's key), ``None`` for an image."""
    key = ProfileKey(pair=pair_id, height=height, width=width, dtype=dtype, device=device, batch=batch,
                     text_tokens=text_tokens, threads=cpu_threads(device), frames=num_frames or 0)
    extra = {} if flops is None else {"flops": flops}
    return load_profile(key) or estimate_costs_from_configs(large_config, small_config, num_tokens, text_tokens,
                                                            **extra)


def _full_large_problem(ratio: float, costs: Costs, path: str) -> ConfigError:
    """Eq. 7 with the large model's share priced at 1: every token, whatever the mask."""
    bound = 1.0 - costs.small_ms / costs.large_ms
    step = costs.large_ms + costs.small_ms
    return ConfigError(
        f"{path}.mask_ratios[0]",
        f"{ratio:.4g} is priced as 1 because the context computes every token, and 1 breaks Eq. 7",
        f"it must be below 1 − Ls/Ll = {bound:.4g} (a hybrid step costs Ll + Ls = {step:.4g} against "
        f"Ll = {costs.large_ms:.4g}); set allow_unprofitable for ablations")


def check_switch_policy(policy: Any, costs: Costs, *, allow_unprofitable: bool = False,
                        path: str = "switch", computes_all_tokens: bool = False) -> tuple[str, ...]:
    """Refuse a policy whose ``mask_ratios`` break Eq. 7-8 (a warning instead with ``allow_unprofitable``);
    warn when a profile's measured masked cost breaks Eq. 6. Returns the problems' one-line messages.

    ``computes_all_tokens``: the context runs the large model on every token of a hybrid step (FullLarge),
    which Eq. 7 prices at ``M = 1``. Policies without ``mask_ratios`` have no hybrid stage to check. Eq. 7-8 involve the ratios and the
    costs only, not the switch steps, so the plan handed to the latency model has one step per stage.
    """
    ratios = tuple(getattr(policy, "mask_ratios", None) or ())
    if not ratios:
        return ()
    if computes_all_tokens:
        problem = _full_large_problem(ratios[0], costs, path)
        if not allow_unprofitable:
            raise problem
        # allow_unprofitable is already set: the warning states the breach without advising it (issue 24).
        note = str(problem).removesuffix("; set allow_unprofitable for ablations") + " (allowed: allow_unprofitable)"
        warnings.warn(note, UnprofitablePlanWarning, stacklevel=2)
        return (note,)
    n = len(ratios)
    plan = Plan(steps=n + 1, switch_steps=tuple(range(1, n + 2)), mask_ratios=ratios)
    try:
        # Refuse on the paper's model (masked cost = L_l · M), whatever the cache holds, so a run's
        # verdict does not depend on whether a profile happens to exist.
        problems = check_profitable(plan, attrs.evolve(costs, masked_ms=()), allow_unprofitable=allow_unprofitable)
    except ConfigError as err:
        source = "a profile" if costs.source == "profile" else "an estimate from the transformer configs' FLOPs"
        allowed = f"{err.allowed} (Ls/Ll from {source}); set allow_unprofitable for ablations"
        raise ConfigError(f"{path}.{err.path}", err.problem, allowed) from None
    if costs.masked_ms:
        # The measured masked cost can still make a hybrid step dearer than a large one (Eq. 6 with
        # L_l(M)): per-layer overheads on small models. Say so, but do not refuse.
        problems += check_profitable(plan, costs, allow_unprofitable=True)
    return problems
