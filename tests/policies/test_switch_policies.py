"""The built-in switch policies: the shipped state machine on each, and each method's rule by hand."""

from __future__ import annotations

import math

import attrs
import pluggy
import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import stitchkit
import stitchkit.hookspecs
from stitchkit.errors import ConfigError
from stitchkit.policies import baselines, hybridstitch, srdiffusion, tstitch
from stitchkit.policies.baselines import Large, Small
from stitchkit.policies.hybridstitch import PRESETS, HybridStitch
from stitchkit.policies.srdiffusion import PRESETS as SR_PRESETS
from stitchkit.policies.srdiffusion import SRDiffusion
from stitchkit.policies.tstitch import TStitch
from stitchkit.protocols import Decision, LoopState, SwitchPolicy
from stitchkit.testing import switch_policy_machine

MACHINE_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

LARGE = Decision(stage=0, large=True, small=False)


def registered() -> dict[str, tuple[object, dict]]:
    """kind or preset -> (factory, params), collected through pluggy as the registry does."""
    pm = pluggy.PluginManager("stitchkit")
    pm.add_hookspecs(stitchkit.hookspecs)
    for module in (baselines, tstitch, srdiffusion, hybridstitch):
        pm.register(module)
    found: dict[str, tuple[object, dict]] = {}

    def register(kind, factory, presets=None):
        assert kind not in found
        found[kind] = (factory, {})
        for name, params in (presets or {}).items():
            assert name not in found
            found[name] = (factory, dict(params))

    pm.hook.register_switch_policies(register=register)
    return found


def build(name: str, **overrides):
    factory, params = registered()[name]
    params = {k: v for k, v in {**params, **overrides}.items() if k not in ("mask", "context", "sampler")}
    return factory(**params)


def state(step: int, num_steps: int, change=None, batch: int = 1) -> LoopState:
    if change is not None:
        change = torch.tensor(change, dtype=torch.float32).reshape(batch)
    return LoopState(
        step=step,
        num_steps=num_steps,
        timestep=1000.0 * (1 - step / num_steps),
        sigma=1 - step / num_steps,
        num_tokens=4,
        grid=(2, 2),
        batch_size=batch,
        change=change,
        change_map=None if change is None else change[:, None].expand(batch, 4).clone(),
    )


def run(policy, changes, num_steps=None) -> list[Decision]:
    """Drive ``policy`` through one generation; ``changes[i]`` is the D_t handed at step i."""
    num_steps = num_steps or len(changes)
    policy.reset(num_steps)
    out = []
    for i, change in enumerate(changes):
        batch = 1 if change is None or isinstance(change, float) else len(change)
        out.append(policy.decide(state(i, num_steps, change, batch)))
    return out


def stage_list(policy, changes, num_steps=None) -> list[int]:
    return [d.stage for d in run(policy, changes, num_steps)]


# ---------------------------------------------------------------- registration


def test_every_kind_and_preset_is_registered():
    assert sorted(registered()) == sorted(
        ["large", "small", "t-stitch", "srdiffusion", "hybridstitch", *PRESETS, *SR_PRESETS]
    )


def test_presets_are_the_papers():
    paper = {"sampler": {"steps": 50, "height": 768, "width": 768}}  # §4.1
    assert PRESETS == {
        "hybridstitch-10": {"thresholds": (0.3, 0.25), "mask_ratios": (0.1,), **paper},
        "hybridstitch-20": {"thresholds": (0.35, 0.25), "mask_ratios": (0.2,), **paper},
        "hybridstitch-30": {"thresholds": (0.5, 0.3), "mask_ratios": (0.3,), **paper},
        "hybridstitch-40": {"thresholds": (0.4, 0.3), "mask_ratios": (0.4,), **paper},
        "hybridstitch-20-10": {"thresholds": (0.5, 0.3, 0.2), "mask_ratios": (0.2, 0.1), **paper},
        "hybridstitch-30-10": {"thresholds": (0.5, 0.3, 0.2), "mask_ratios": (0.3, 0.1), **paper},
        "hybridstitch-40-30": {"thresholds": (0.6, 0.5, 0.3), "mask_ratios": (0.4, 0.3), **paper},
        **{f"staticmask-{n}": {**PRESETS[f"hybridstitch-{n}"], "mask": "static"} for n in (10, 20, 30, 40)},
        **{
            f"fulllarge-{n}": {**PRESETS[f"hybridstitch-{n}"], "context": "full-large"}
            for n in (10, 20, 30, 40)
        },
    }


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_registered_policy_follows_the_protocol(name):
    policy = build(name)
    assert isinstance(policy, SwitchPolicy)
    assert policy.change_measure in ("x0", "x0-prev", "latent", "output")
    assert attrs.has(type(policy))


# ---------------------------------------------------------------- the shipped state machine


def tstitch_reference(fraction):
    def make():
        return lambda s: Decision(
            stage=int(s.step >= math.floor(fraction * s.num_steps + 1e-9)),  # steps floor(f*T).. run large
            large=s.step >= math.floor(fraction * s.num_steps + 1e-9),
            small=s.step < math.floor(fraction * s.num_steps + 1e-9),
        )

    return make


def hybrid_reference(thresholds, ratios):
    """HybridStitch's stage table, written as Algorithm 1 reads: one transition per step at most."""

    def make():
        kinds = ["large", *(["hybrid"] * len(ratios)), "small"]
        stage = [0]

        def decide(s):
            if s.change is not None and stage[0] < len(thresholds):
                if all(float(d) < thresholds[stage[0]] for d in s.change):
                    stage[0] += 1
            kind = kinds[stage[0]]
            return Decision(
                stage=stage[0],
                large=kind != "small",
                small=kind != "large",
                mask_ratio=ratios[stage[0] - 1] if kind == "hybrid" else None,
            )

        return decide

    return make


MACHINE_CASES = {name: {} for name in sorted(registered())} | {
    "t-stitch(small_fraction=0)": {"name": "t-stitch", "small_fraction": 0.0},
    "t-stitch(small_fraction=1)": {"name": "t-stitch", "small_fraction": 1.0},
    "srdiffusion(rule=paper)": {"name": "srdiffusion", "rule": "paper", "threshold": 0.3},
    "srdiffusion(min=3,max=8)": {"name": "srdiffusion", "min_switch_step": 3, "max_switch_step": 8},
    "srdiffusion(xdit,min=0,max=4)": {"name": "srdiffusion", "rule": "xdit", "min_switch_step": 0,
                                      "max_switch_step": 4},
    "srdiffusion(tanh-drop,max=0)": {"name": "srdiffusion-tanh-drop", "max_switch_step": 0},
}


@pytest.mark.parametrize("case", sorted(MACHINE_CASES))
def test_state_machine_on_every_builtin_policy(case):
    params = dict(MACHINE_CASES[case])
    name = params.pop("name", case)
    policy = build(name, **params)
    reference = None
    if isinstance(policy, HybridStitch):
        reference = hybrid_reference(policy.thresholds, policy.mask_ratios)
    elif isinstance(policy, TStitch):
        reference = tstitch_reference(policy.small_fraction)
    machine = switch_policy_machine(lambda: build(name, **params), reference=reference, name=case)
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


class SkipsHybrid:
    """A broken policy: jumps from the large stage straight past the hybrid one."""

    change_measure = "x0"
    stages = ("large", "hybrid", "small")

    def reset(self, num_steps):
        self.stage = 0

    def decide(self, s):
        if s.change is not None and float(s.change.max()) < 0.3:
            self.stage = 2
        return [LARGE, None, Decision(stage=2, large=False, small=True)][self.stage]


class ForgetsToReset:
    """A broken policy: keeps its stage from the last generation."""

    change_measure = "x0"
    stages = ("large", "small")
    stage = 0

    def reset(self, num_steps):
        pass

    def decide(self, s):
        if s.change is not None and float(s.change.max()) < 0.3:
            self.stage = 1
        return LARGE if self.stage == 0 else Decision(stage=1, large=False, small=True)


@pytest.mark.parametrize(
    ("broken", "message"),
    [(SkipsHybrid, "jumped from 0 to 2"), (ForgetsToReset, "state leaked")],
)
def test_state_machine_catches_broken_policies(broken, message):
    machine = switch_policy_machine(broken, num_steps=st.integers(2, 6))
    strict = settings(
        MACHINE_SETTINGS,
        max_examples=200,
        phases=[Phase.generate],
        derandomize=True,
        report_multiple_bugs=False,
    )
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(machine, settings=strict)


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize(
    ("policy", "decision"),
    [(Large(), LARGE), (Small(), Decision(stage=0, large=False, small=True))],
)
def test_baselines_never_change(policy, decision):
    changes = [None, 1.0, 0.0, 1e-9, [0.0, 5.0], 0.3]
    assert run(policy, changes) == [decision] * len(changes)


# ---------------------------------------------------------------- T-Stitch


@pytest.mark.parametrize(
    ("num_steps", "small_fraction", "small_steps"),
    [
        (50, 0.4, 20),  # §4.1: first 40% small, remaining 60% large
        (10, 0.4, 4),
        (25, 0.4, 10),
        (7, 0.4, 2),  # (i + 1) / 7 <= 0.4 for i + 1 <= 2.8
        (3, 0.4, 1),
        (1, 0.4, 0),  # 1 / 1 > 0.4: the only step is large
        (4, 0.5, 2),
        (28, 0.3, 8),  # 8 / 28 = 0.2857 <= 0.3 < 9 / 28
        (10, 0.0, 0),
        (10, 1.0, 10),
    ],
)
def test_tstitch_switches_where_its_rule_says(num_steps, small_fraction, small_steps):
    decisions = run(TStitch(small_fraction=small_fraction), [None] * num_steps)
    small = Decision(stage=0, large=False, small=True)
    large = Decision(stage=1, large=True, small=False)
    assert decisions == [small] * small_steps + [large] * (num_steps - small_steps)


def test_tstitch_default_is_the_papers_forty_percent():
    assert TStitch().small_fraction == 0.4


# ---------------------------------------------------------------- SRDiffusion

# Each variant is replayed on D_t sequences whose tanh was worked out by hand; ``changes[i]`` is handed at
# step i (it compares the outputs of steps i-2 and i-1, so it is None at steps 0 and 1).
# tanh: 0.5 -> 0.462117, 0.49 -> 0.454216, 0.48 -> 0.446244, 0.47 -> 0.438205, 0.465 -> 0.434167.
# Drops 0.5->0.49: 0.00790, 0.49->0.48: 0.00797, 0.48->0.47: 0.00804, 0.47->0.465: 0.00404: all in (0, 0.01).
FALLING = [None, None, 0.5, 0.49, 0.48, 0.47, 0.465, 0.465, 0.465, 0.465]
FLAT = [None, None] + [0.5] * 33  # drop 0 every step: only max_switch_step can switch


def test_srdiffusion_default_is_fastvideo_with_its_defaults():
    policy = SRDiffusion()
    assert (policy.rule, policy.threshold, policy.min_switch_step, policy.max_switch_step) == (
        "fastvideo", 0.01, 5, 30)
    assert policy.change_measure == "x0-prev"  # x0 after CFG over the older x0 (denoising.py 567-569)
    assert SRDiffusion(rule="xdit").change_measure == "output"
    assert SRDiffusion(rule="xdit", change="x0").change_measure == "x0"


def test_fastvideo_first_small_step_is_min_plus_one_at_the_earliest():
    # The rule holds from step 3 on, but steps < 5 never look (lines 559-560); at step 5 d_prev is still
    # its initial 0.0, so 0 - tanh(0.47) < 0; at step 6 the drop 0.00404 is in (0, 0.01): first small.
    assert stage_list(build("srdiffusion-fastvideo"), FALLING) == [0] * 6 + [1] * 4
    assert stage_list(SRDiffusion(), FALLING) == [0] * 6 + [1] * 4
    # min 0: the first look is at step 2 (d_prev 0.0: no), step 3 switches
    assert stage_list(SRDiffusion(min_switch_step=0), FALLING) == [0] * 3 + [1] * 7


def test_fastvideo_max_makes_step_max_the_first_small_one():
    assert stage_list(SRDiffusion(), FLAT) == [0] * 30 + [1] * 5  # i >= 30 at step 30 (0-based)
    assert stage_list(SRDiffusion(max_switch_step=7), FLAT) == [0] * 7 + [1] * 28


def test_xdit_first_small_step_is_min_plus_one_at_the_earliest():
    # xDiT checks after each call; call k's d compares outputs k-1 and k (handed here at step k+1). The
    # first d (call 1) only seeds d_prev; calls 2-4 hold the rule but are below min 5; call 5 (drop
    # 0.00404) switches, so the *next* step, 6, is the first small one.
    assert stage_list(build("srdiffusion-xdit"), FALLING) == [0] * 6 + [1] * 4
    assert stage_list(SRDiffusion(rule="xdit", min_switch_step=0), FALLING) == [0] * 3 + [1] * 7


def test_xdit_max_makes_step_max_plus_one_the_first_small_one():
    assert stage_list(SRDiffusion(rule="xdit"), FLAT) == [0] * 31 + [1] * 4  # call 30 >= 30 -> step 31
    assert stage_list(SRDiffusion(rule="xdit", max_switch_step=7), FLAT) == [0] * 8 + [1] * 27


def test_off_by_one_against_stitchkits_earlier_rule_and_drops_too_large():
    # tanh-drop (stitchkit's earlier reading) with min 5 switches at step 5 itself: it kept d from step 4
    tanh_drop = SRDiffusion(rule="tanh-drop", min_switch_step=5, max_switch_step=30)
    assert stage_list(tanh_drop, FALLING) == [0] * 5 + [1] * 5
    # a drop that is too large at step 6 (0.47 -> 0.40: tanh 0.438205 -> 0.379949, drop 0.058) and a rise
    # at step 7 (0.40 -> 0.41): neither switches until 0.41 -> 0.405 (tanh 0.388385 -> 0.384187, drop
    # 0.00420) at step 8
    late = [None, None, 0.5, 0.49, 0.48, 0.47, 0.40, 0.41, 0.405, 0.40]
    assert stage_list(SRDiffusion(), late) == [0] * 8 + [1] * 2
    assert stage_list(SRDiffusion(rule="xdit"), late) == [0] * 8 + [1] * 2


def test_srdiffusion_tanh_drop_reproduces_stitchkits_earlier_rule():
    # d = tanh(D): 0.3 -> 0.291313 (drop 0.1708), 0.2 -> 0.197375 (drop 0.0939), 0.201 -> 0.198326
    # (drop -0.0010: rising, no switch), 0.198 -> 0.195453 (drop 0.00287 < 0.005: switch).
    changes = [None, None, 0.5, 0.3, 0.2, 0.201, 0.198, 0.197, 0.196, 0.195, 0.194, 0.193]
    policy = build("srdiffusion-tanh-drop")
    assert (policy.threshold, policy.change_measure) == (0.005, "output")
    assert stage_list(policy, changes) == [0] * 6 + [1] * 6
    assert stage_list(policy, changes) == [0] * 6 + [1] * 6  # reset forgets the last generation
    flat = [None, None, 0.3, 0.3, 0.3, 0.25, 0.2, 0.15]  # a zero drop and large drops never switch
    assert stage_list(build("srdiffusion-tanh-drop"), flat) == [0] * 8
    assert stage_list(build("srdiffusion-tanh-drop", threshold=0.2), changes) == [0] * 3 + [1] * 9
    # min: the large model before step s; max: step s is the first small step
    assert stage_list(build("srdiffusion-tanh-drop", min_switch_step=9), changes) == [0] * 9 + [1] * 3
    no_switch = [None, None] + [0.5] * 8
    assert stage_list(build("srdiffusion-tanh-drop", max_switch_step=4), no_switch) == [0] * 4 + [1] * 6
    assert stage_list(build("srdiffusion-tanh-drop", max_switch_step=0), no_switch) == [1] * 10


@pytest.mark.parametrize("rule", ["fastvideo", "xdit", "tanh-drop"])
def test_srdiffusion_batch_switches_when_every_sample_agrees(rule):
    both = [None, None, [0.5, 0.5], [0.3, 0.3], [0.2, 0.2], [0.198, 0.3], [0.197, 0.2998]]
    # sample 1 at step 5 rises (no), at step 6: tanh(0.3) - tanh(0.2998) = 0.00018 and sample 0 0.00087: yes
    policy = SRDiffusion(rule=rule, min_switch_step=0, max_switch_step=None)
    assert stage_list(policy, both) == [0] * 6 + [1]
    sample1_rises = [None, None, [0.5, 0.5], [0.3, 0.3], [0.2, 0.2], [0.198, 0.3], [0.197, 0.31]]
    assert stage_list(policy, sample1_rises) == [0] * 7


def test_srdiffusion_paper_rule_is_plain_threshold():
    policy = SRDiffusion(rule="paper", threshold=0.25, min_switch_step=None, max_switch_step=None)
    assert policy.change_measure == "x0"
    assert stage_list(policy, [None, 0.5, 0.3, 0.26, 0.24, 0.9]) == [0, 0, 0, 0, 1, 1]


def test_srdiffusion_variants_are_registered_with_their_defaults():
    found = registered()
    assert found["srdiffusion-fastvideo"][1] == {"rule": "fastvideo", "change": "x0-prev", "threshold": 0.01,
                                                 "min_switch_step": 5, "max_switch_step": 30}
    assert found["srdiffusion-xdit"][1] == {"rule": "xdit", "change": "output", "threshold": 0.01,
                                            "min_switch_step": 5, "max_switch_step": 30}
    assert found["srdiffusion-tanh-drop"][1]["threshold"] == 0.005


# ---------------------------------------------------------------- HybridStitch


def hybrid(ratio):
    return Decision(stage=1, large=True, small=True, mask_ratio=ratio)


SMALL_AT = {2: Decision(stage=2, large=False, small=True), 3: Decision(stage=3, large=False, small=True)}


def test_hybridstitch_stage_table():
    policy = build("hybridstitch-10")  # thresholds (0.3, 0.25)
    changes = [None, 0.9, 0.5, 0.29, 0.28, 0.25, 0.24, 0.5, 0.01]
    # 0.29 < 0.3 enters the hybrid stage; 0.25 is not below 0.25; 0.24 is; 0.5 later never goes back
    assert run(policy, changes) == [LARGE] * 3 + [hybrid(0.1)] * 3 + [SMALL_AT[2]] * 3


def test_hybridstitch_never_skips_the_hybrid_stage():
    # §4.1: D_t below both thresholds while still in stage 0 still goes to stage 1 first
    policy = build("hybridstitch-10")
    assert run(policy, [None, 0.01, 0.01, 0.01]) == [LARGE, hybrid(0.1), SMALL_AT[2], SMALL_AT[2]]
    assert run(policy, [None, 0.01, 0.9, 0.9]) == [LARGE, hybrid(0.1), hybrid(0.1), hybrid(0.1)]


def test_hybridstitch_multi_mask_stage_table():
    policy = build("hybridstitch-40-30")  # thresholds (0.6, 0.5, 0.3), masks (0.4, 0.3)
    changes = [None, 0.7, 0.55, 0.45, 0.1, 0.35, 0.29, 0.0]
    assert run(policy, changes) == [
        LARGE,
        LARGE,
        Decision(stage=1, large=True, small=True, mask_ratio=0.4),
        Decision(stage=2, large=True, small=True, mask_ratio=0.3),
        SMALL_AT[3],
        SMALL_AT[3],
        SMALL_AT[3],
        SMALL_AT[3],
    ]
    assert policy.stages == ("large", "hybrid", "hybrid", "small")


def test_hybridstitch_batch_advances_when_every_sample_is_below():
    policy = build("hybridstitch-30")  # thresholds (0.5, 0.3)
    assert stage_list(policy, [None, [0.2, 0.6], [0.49, 0.4], [0.1, 0.31], [0.29, 0.1]]) == [0, 0, 1, 1, 2]


def test_hybridstitch_waits_for_a_change_and_resets():
    policy = HybridStitch()
    assert stage_list(policy, [None, None, None]) == [0, 0, 0]
    assert stage_list(policy, [None, 0.1, 0.1]) == [0, 1, 2]
    assert stage_list(policy, [None, 0.9]) == [0, 0]


def test_hybridstitch_defaults():
    policy = HybridStitch()
    assert policy.thresholds == (0.5, 0.3) and policy.mask_ratios == (0.3,)
    assert policy.change_measure == "x0"
    assert HybridStitch(thresholds=[0.5, 0.3], mask_ratios=[0.3]).thresholds == (0.5, 0.3)  # YAML lists


# ---------------------------------------------------------------- validators


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (
            HybridStitch,
            {"thresholds": (0.3, 0.5)},
            "thresholds: must be strictly decreasing, got (0.3, 0.5); e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": (0.5, 0.5)},
            "thresholds: must be strictly decreasing, got (0.5, 0.5); e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": (0.5, -0.1)},
            "thresholds[1]: must be positive, got -0.1; e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": (0.5, "a")},
            "thresholds[1]: must be a number, got 'a'; e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": (float("nan"), 0.3)},
            "thresholds[0]: must be a number, got nan; e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": 0.5},
            "thresholds: must be a non-empty list of numbers, got 0.5; e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": []},
            "thresholds: must be a non-empty list of numbers, got (); e.g. (0.5, 0.3)",
        ),
        (
            HybridStitch,
            {"thresholds": (0.5, 0.4, 0.3)},
            "thresholds: needs 2 values (one per stage transition: len(mask_ratios) + 1), got 3; "
            "e.g. thresholds (0.5, 0.3) with mask_ratios (0.3,)",
        ),
        (
            HybridStitch,
            {"mask_ratios": (1.0,)},
            "mask_ratios[0]: must be in (0, 1), got 1.0; a fraction of the image tokens, e.g. 0.3",
        ),
        (
            HybridStitch,
            {"mask_ratios": (0.0,)},
            "mask_ratios[0]: must be in (0, 1), got 0.0; a fraction of the image tokens, e.g. 0.3",
        ),
        (
            HybridStitch,
            {"mask_ratios": (0.1, 0.2), "thresholds": (0.5, 0.4, 0.3)},
            "mask_ratios: must be strictly decreasing, got (0.1, 0.2); e.g. (0.4, 0.3)",
        ),
        (
            HybridStitch,
            {"mask_ratios": (True,)},
            "mask_ratios[0]: must be a number, got True; e.g. (0.3,) or (0.4, 0.3)",
        ),
        (
            HybridStitch,
            {"change": "noise"},
            "change: unknown change measure 'noise'; known: latent, latent-std, output, small-output, small-x0, x0, x0-prev",
        ),
        (
            TStitch,
            {"small_fraction": 1.5},
            "small_fraction: must be in [0, 1], got 1.5; 0: large only, 1: small only",
        ),
        (
            TStitch,
            {"small_fraction": "0.4"},
            "small_fraction: must be a number, got '0.4'; a fraction in [0, 1], e.g. 0.4",
        ),
        (SRDiffusion, {"threshold": 0}, "threshold: must be positive, got 0; e.g. 0.01"),
        (
            SRDiffusion,
            {"threshold": None},
            "threshold: must be a number, got None; a positive number, e.g. 0.01",
        ),
        (SRDiffusion, {"rule": "tanh"}, "rule: unknown rule 'tanh'; known: fastvideo, xdit, tanh-drop, paper"),
        (
            SRDiffusion,
            {"change": "eps"},
            "change: unknown change measure 'eps'; known: latent, latent-std, output, small-output, small-x0, x0, x0-prev",
        ),
        (
            SRDiffusion,
            {"min_switch_step": -1},
            "min_switch_step: must be a step index >= 0 or null, got -1; e.g. 10",
        ),
        (
            SRDiffusion,
            {"max_switch_step": 2.5},
            "max_switch_step: must be a step index >= 0 or null, got 2.5; e.g. 10",
        ),
        (
            SRDiffusion,
            {"min_switch_step": 10, "max_switch_step": 5},
            "max_switch_step: is 5, before min_switch_step 10; max_switch_step >= min_switch_step",
        ),
    ],
)
def test_validator_messages(factory, params, message):
    with pytest.raises(ConfigError) as err:
        factory(**params)
    assert str(err.value) == message
    assert "\n" not in message
    assert str(err.value.at("switch")).startswith("switch.")


def test_every_preset_builds():
    for name in PRESETS:
        policy = build(name)
        assert len(policy.thresholds) == len(policy.mask_ratios) + 1
