"""RAS (microsoft/RAS) as stitchkit policies: the switch through stitchkit.testing's state machine against
RAS's own step rule, the mask's ranking and starvation counter against a hand-worked example, and the
preset end to end on the tiny-random pair."""

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from stitchkit.masks import mask_size
from stitchkit.policies.ras import RASMask, RASSwitch
from stitchkit.protocols import Decision, LoopState
from stitchkit.testing import check_mask, mask_policy_machine, switch_policy_machine

MACHINE_SETTINGS = settings(max_examples=15, stateful_step_count=30, deadline=None)


def ras_reference(sample_ratio, start, end, resets):
    """RAS's rule as ras_manager.py (lines 81-99) writes it, with steps from the fractions: a RAS step is
    one with start <= step <= end and not an error reset; the first RAS step needs a full step before."""

    def make():
        seen = {"stage": 0, "last": None, "n": None}

        def decide(s: LoopState):
            n = s.num_steps
            first, last = max(1, int(start * n + 0.5)), min(n - 1, int(end * n + 0.5))
            is_ras = first <= s.step <= last and s.step not in {int(f * n + 0.5) for f in resets}
            kind = "ras" if is_ras else "large"
            if seen["last"] is not None and kind != seen["last"]:
                seen["stage"] += 1
            seen["last"] = kind
            if is_ras:
                return Decision(stage=seen["stage"], large=True, small=False, mask_ratio=sample_ratio,
                                reuse="as-is")
            return Decision(stage=seen["stage"], large=True, small=False)

        return decide

    return make


@pytest.mark.parametrize("params", [{}, {"sample_ratio": 0.25, "error_resets": [0.5]},
                                    {"start": 0.0, "end": 0.6, "error_resets": []}])
def test_switch_through_the_state_machine_matches_ras_rule(params):
    policy = RASSwitch(**params)
    reference = ras_reference(policy.sample_ratio, policy.start, policy.end, policy.error_resets)
    machine = switch_policy_machine(lambda: RASSwitch(**params), reference=reference, name=f"ras{params}",
                                    num_steps=st.integers(1, 40))
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_switch_at_28_steps_is_the_sd3_example():
    policy = RASSwitch()
    policy.reset(28)
    decisions = [policy.decide(LoopState(step=i, num_steps=28, timestep=0.0, sigma=0.0, num_tokens=4, grid=(2, 2),
                                         batch_size=1)) for i in range(28)]
    full = [i for i, d in enumerate(decisions) if not d.masked]
    assert full == [0, 1, 2, 3, 12, 20]
    assert all(d.mask_ratio == 0.5 and d.reuse == "as-is" for d in decisions if d.masked)


def test_mask_through_the_state_machine():
    machine = mask_policy_machine(lambda: RASMask(), name="ras-mask")
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def _state(change_map, num_steps=3):
    return LoopState(step=1, num_steps=num_steps, timestep=0.0, sigma=0.0, num_tokens=change_map.shape[1],
                     grid=(1, change_map.shape[1]), batch_size=change_map.shape[0], change_map=change_map)


def test_mask_ranking_and_starvation_by_hand():
    """8 tokens, keep half: 4 dropped, high_ratio 0.5 -> the 2 lowest and the 2 highest are dropped."""
    cmap = torch.tensor([[0.1, 0.8, 0.3, 0.5, 0.2, 0.9, 0.4, 0.6]])
    mask = RASMask(starvation_scale=0.0, high_ratio=0.5)
    mask.reset()
    kept = mask.select(_state(cmap), 0.5)
    # ascending: 0(.1) 4(.2) 2(.3) 6(.4) 3(.5) 7(.6) 1(.8) 5(.9); drop 0, 4 and 1, 5
    assert kept.tolist() == [[2, 3, 6, 7]]
    # high_ratio 0 (drop only the calmest) and a starvation scale: a token dropped again and again gains
    # exp(scale) per drop until it outranks the others and is recomputed.
    mask = RASMask(starvation_scale=1.0, high_ratio=0.0)
    mask.reset()
    flat = torch.tensor([[1.0, 1.0, 1.0, 2.0]])
    picks = [mask.select(_state(flat), 0.75).tolist()[0] for _ in range(3)]
    # Drop counts start equal (-4); token 0 is dropped first (stable sort of ties), then it ranks
    # e^1 = 2.72 > 2 and token 1 is the calmest, and so on: each token takes its turn.
    assert picks == [[1, 2, 3], [0, 2, 3], [0, 1, 3]]
    check_mask(torch.tensor(picks[0])[None], 1, 4, 0.75)
    assert mask_size(0.75, 4) == 3


ARGS = dict(prompt="a red circle", height=128, width=128, num_inference_steps=8, guidance_scale=4.0,
            max_sequence_length=8, output_type="latent")
N = (128 // 8 // 2) ** 2


def test_preset_end_to_end(tiny_pair, stitch_pipe):
    out = stitch_pipe(**ARGS, generator=torch.Generator().manual_seed(0), switch="ras-50")
    m = mask_size(0.5, N)
    kinds = [(r.large_tokens, r.reused_tokens) for r in out.trace]
    # 8 steps: full before round(8 * 4/28) = 1, resets at round(8 * 12/28) = 3 and round(8 * 20/28) = 6.
    assert kinds == [(N, 0), (m, N - m), (m, N - m), (N, 0), (m, N - m), (m, N - m), (N, 0), (m, N - m)]
    large, _ = tiny_pair
    expected = large(**ARGS, generator=torch.Generator().manual_seed(0)).images
    whole = stitch_pipe(**ARGS, generator=torch.Generator().manual_seed(0),
                        switch={"kind": "ras", "sample_ratio": 1.0}, mask="ras")
    assert (whole.images - expected).abs().max() <= 1e-5  # a RAS step on every token is the large model
    assert (out.images - expected).abs().max() > 1e-4  # while reusing half the tokens is not


# -- reuse-every: step-level reuse composed with another switch policy ---------------------------------

def test_reuse_every_through_the_state_machine():
    from stitchkit.registry import get_registry

    registry = get_registry(entry_points=False)

    machine = switch_policy_machine(lambda: registry.create(
        "switch", {"kind": "reuse-every", "inner": {"kind": "hybridstitch-30", "thresholds": [0.15, 0.05]}})[0],
                                    name="reuse-every")
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_reuse_every_end_to_end(stitch_pipe):
    switch = {"kind": "reuse-every", "inner": {"kind": "srdiffusion", "min_switch_step": 1, "max_switch_step": 2}, "every": 2}
    out = stitch_pipe(**ARGS, generator=torch.Generator().manual_seed(0), switch=switch)
    inner = stitch_pipe(**ARGS, generator=torch.Generator().manual_seed(0),
                        switch={"kind": "srdiffusion", "min_switch_step": 1, "max_switch_step": 2})
    s = [r.stage for r in inner.trace].index(1)  # the inner policy alone switches to the small model here
    assert 0 < s < 8
    # Composed: the same switch step (nothing is reused before it), then every 2nd step of the small stage
    # reused (extrapolated), the stage's first step running the model.
    expected = [(0, False, False)] * s + [(1, (j % 2) == 0, (j % 2) == 1) for j in range(8 - s)]
    assert [(r.stage, r.small_tokens > 0, r.reused_tokens > 0) for r in out.trace] == expected
