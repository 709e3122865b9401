"""Policies are checked against their protocol when resolved, and what they return at every step; a hybrid
step before any large step is refused by the engine and caught by stitchkit.testing's machine."""

import pytest
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
                                 "known: latent, latent-std, output, small-x0, x0, x0-prev"),
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
