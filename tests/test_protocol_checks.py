"""Policies are checked against their protocol when resolved, and what they return at every step; a hybrid
step before any large step is refused by the engine and caught by stitchkit.testing's machine."""

import pytest
import torch
from hypothesis import settings
from hypothesis.errors import Flaky

from stitchkit import ConfigError
from stitchkit.protocols import Decision
from stitchkit.registry import get_registry
from stitchkit.testing import switch_policy_machine

ARGS = dict(prompt="a cat", height=64, width=64, num_inference_steps=3, max_sequence_length=8,
            output_type="latent")


class NoDecide:
    change_measure = "x0"

    def reset(self, num_steps):
        pass


class ReturnsTuple(NoDecide):
    def decide(self, state):
        return (0, True, False)


class HybridFirst(NoDecide):
    """Broken: a hybrid step at step 0, before the large model has recorded any K/V."""

    def decide(self, state):
        return Decision(stage=0, large=True, small=True, mask_ratio=0.5)


class ListMask:
    def reset(self):
        pass

    def select(self, state, ratio):
        return [0, 1]


class UnknownMeasure(HybridFirst):
    change_measure = "pixels"


@pytest.mark.parametrize("kind, policy, message", [
    ("switch", NoDecide(), "switch: NoDecide has no decide; a switch policy needs change_measure, "
                           "reset(num_steps), decide(state) -> Decision (see stitchkit.protocols)"),
    ("switch", UnknownMeasure(), "switch.change_measure: UnknownMeasure names an unknown measure 'pixels'; "
                                 "known: latent, latent-std, output, small-output, small-x0, x0, x0-prev"),
    ("mask", object(), "mask: object has no reset; a mask policy needs reset(), "
                       "select(state, ratio) -> LongTensor (B, k) (see stitchkit.protocols)"),
    ("context", ListMask(), "context: ListMask has no full; a context policy needs reset(), "
                            "full(large, inputs) -> Tensor, masked(large, inputs, indices) -> Tensor, release() "
                            "(see stitchkit.protocols)"),
])
def test_policy_objects_are_checked_when_resolved(kind, policy, message):
    with pytest.raises(ConfigError) as err:
        get_registry(entry_points=False).create(kind, policy)
    assert str(err.value) == message


def test_a_switch_policy_returning_no_decision_is_one_line(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^switch: ReturnsTuple\.decide returned a tuple at step 0; return "
                                          r"stitchkit\.protocols\.Decision"):
        stitch_pipe(**ARGS, switch=ReturnsTuple())


def test_a_mask_policy_returning_a_list_is_one_line(stitch_pipe):
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    with pytest.raises(ConfigError, match=r"^mask: ListMask\.select returned list; return a torch\.int64"):
        stitch_pipe(**ARGS, switch=switch, mask=ListMask(), allow_unprofitable=True)


def test_the_engine_refuses_a_hybrid_step_before_any_large_step(stitch_pipe):
    with pytest.raises(ConfigError) as err:
        stitch_pipe(**ARGS, switch=HybridFirst())
    assert str(err.value).startswith("switch: HybridFirst asked for a hybrid step at step 0 before any large step;")
    # FullLarge computes every token in a hybrid step, so it needs no recorded K/V.
    out = stitch_pipe(**ARGS, switch=HybridFirst(), context="full-large")
    assert [r.stage for r in out.trace] == [0, 0, 0]


def test_the_state_machine_catches_a_hybrid_step_before_any_large_step():
    machine = switch_policy_machine(HybridFirst, num_steps=3, check_reset=False)
    machine.TestCase.settings = settings(max_examples=5, deadline=None, stateful_step_count=4)
    with pytest.raises((AssertionError, Flaky), match="a hybrid step before any large step"):
        machine.TestCase("runTest").runTest()


class _TopKThen:
    """The built-in top-k answer, then broken as ``fix(indices, n)`` says (issue 25: the mask contract)."""

    def __init__(self, fix):
        self.fix = fix

    def reset(self):
        pass

    def select(self, state, ratio):
        from stitchkit.masks import mask_size

        k = mask_size(ratio, state.num_tokens)
        return self.fix(torch.arange(k, dtype=torch.int64).repeat(state.batch_size, 1), state.num_tokens)


@pytest.mark.parametrize("fix, message", [
    (lambda idx, n: torch.arange(idx.shape[1] + 1).repeat(idx.shape[0], 1),
     r"^mask: _TopKThen\.select returned 6 tokens at ratio 0\.3 of 16, not mask_size\(ratio, N\) = 5; return int64"),
    (lambda idx, n: idx.flip(1), r"^mask: _TopKThen\.select returned tokens not sorted ascending in row 0 "
                                 r"\(\[4, 3, 2, 1, 0\]\); return int64 indices shaped \(batch, mask_size\(ratio, N\)\)"),
    (lambda idx, n: torch.cat([idx[:, :1], idx[:, :-1]], 1), r"^mask: _TopKThen\.select returned token 0 twice in row 0"),
    (lambda idx, n: idx + n - 4, r"^mask: _TopKThen\.select returned token 16, outside \[0, 16\) in row 0"),
    (lambda idx, n: idx[:, :1].reshape(-1), r"^mask: _TopKThen\.select returned shape \(1,\)"),
])
@pytest.mark.parametrize("prompts", [1, 2], ids=["alone", "per-sample batch"])
def test_the_engine_checks_every_mask_it_gets(stitch_pipe, fix, message, prompts):
    """Shape, count, order, uniqueness and range of a mask policy's answer, one line naming the policy, at
    the first hybrid step; before, k + 1 tokens or unsorted rows ran silently."""
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    args = {**ARGS, "prompt": ["a cat"] * prompts}
    with pytest.raises(ConfigError, match=message):
        stitch_pipe(**args, switch=switch, mask=_TopKThen(fix), allow_unprofitable=True)


def test_the_full_mask_answers_every_token_at_any_ratio(stitch_pipe):
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    out = stitch_pipe(**ARGS, switch=switch, mask="full", allow_unprofitable=True)
    assert [r.large_tokens for r in out.trace] == [16, 16, 16]
