"""The built-in mask policies (top-k, static, full), the shared k rule, and the shipped mask checkers."""

from __future__ import annotations

import pluggy
import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import stitchkit
import stitchkit.hookspecs
from stitchkit.masks import evenly_spaced_indices, mask_size, top_k_indices, top_k_mask
from stitchkit.policies import full_mask, static, topk
from stitchkit.policies.full_mask import FullMask
from stitchkit.policies.static import StaticMask
from stitchkit.policies.topk import TopK
from stitchkit.protocols import LoopState, MaskPolicy
from stitchkit.testing import check_mask, check_takes_largest, mask_policy_machine

MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def state(change_map=None, *, stage=1, grid=(2, 3), batch=1, step=0) -> LoopState:
    if change_map is not None:
        change_map = torch.tensor(change_map, dtype=torch.float32).reshape(batch, grid[0] * grid[1])
    return LoopState(
        step=step,
        num_steps=50,
        timestep=500.0,
        sigma=0.5,
        num_tokens=grid[0] * grid[1],
        grid=grid,
        batch_size=batch,
        change=None if change_map is None else change_map.mean(dim=1),
        change_map=change_map,
        stage=stage,
    )


def test_mask_policies_are_registered_through_pluggy():
    pm = pluggy.PluginManager("stitchkit")
    pm.add_hookspecs(stitchkit.hookspecs)
    for module in (topk, static, full_mask):
        pm.register(module)
    found = {}
    pm.hook.register_mask_policies(
        register=lambda kind, factory, presets=None: found.setdefault(kind, factory)
    )
    assert found == {"top-k": TopK, "static": StaticMask, "full": FullMask}
    for factory in found.values():
        assert isinstance(factory(), MaskPolicy)


# ---------------------------------------------------------------- the k rule


@pytest.mark.parametrize(
    ("ratio", "n", "k"),
    [
        (0.1, 2304, 230),  # 768 px, 10%: 230.4
        (0.3, 2304, 691),  # 691.2
        (0.4, 4096, 1638),  # 1638.4
        (0.25, 10, 3),  # 2.5 rounds half up
        (0.35, 10, 4),  # 3.5 rounds half up
        (0.05, 10, 1),  # 0.5 rounds half up
        (0.01, 10, 1),  # never fewer than one token
        (1.0, 7, 7),
        (0.3, 1, 1),
    ],
)
def test_mask_size_rounds_half_up_and_keeps_one_token(ratio, n, k):
    assert mask_size(ratio, n) == k


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_mask_size_refuses_ratios_outside_0_1(ratio):
    with pytest.raises(ValueError, match=r"mask ratio must be in \(0, 1\]"):
        mask_size(ratio, 10)


def test_top_k_indices_by_hand_with_ties_to_the_lower_index():
    cmap = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.5, 0.0], [3.0, 3.0, 3.0, 1.0, 3.0, 2.0]])
    assert top_k_indices(cmap, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert top_k_indices(cmap, 3).dtype == torch.int64


def test_evenly_spaced_fallback():
    assert evenly_spaced_indices(2, 10, 3).tolist() == [[1, 5, 8], [1, 5, 8]]
    assert evenly_spaced_indices(1, 4, 4).tolist() == [[0, 1, 2, 3]]
    assert top_k_mask(None, 0.5, 6, 1).tolist() == [[1, 3, 5]]


def test_top_k_mask_checks_the_change_map_shape():
    with pytest.raises(ValueError, match=r"expected \(batch, tokens\) = \(2, 6\)"):
        top_k_mask(torch.zeros(1, 6), 0.5, 6, 2)


# ---------------------------------------------------------------- policies by hand


def test_top_k_rechooses_every_step_per_sample():
    policy = TopK()
    policy.reset()
    first = policy.select(state([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], batch=2), 0.5)
    assert first.tolist() == [[3, 4, 5], [0, 1, 2]]
    second = policy.select(state([[9, 0, 0, 9, 0, 9], [0, 9, 9, 0, 9, 0]], batch=2, step=1), 0.5)
    assert second.tolist() == [[0, 3, 5], [1, 2, 4]]


def test_top_k_without_a_change_map_falls_back_to_evenly_spaced_tokens():
    assert TopK().select(state(None, batch=2), 0.5).tolist() == [[1, 3, 5], [1, 3, 5]]


def test_static_mask_is_frozen_within_a_stage_and_rechosen_at_the_next():
    policy = StaticMask()
    policy.reset()
    entry = policy.select(state([0, 1, 2, 3, 4, 5], stage=1), 0.5)
    assert entry.tolist() == [[3, 4, 5]]
    later = policy.select(state([5, 4, 3, 2, 1, 0], stage=1, step=1), 0.5)
    assert later.tolist() == [[3, 4, 5]]
    # a new stage (the next, smaller mask) chooses again, from the change at its entry
    assert policy.select(state([5, 4, 3, 2, 1, 0], stage=2, step=2), 0.2).tolist() == [[0]]
    assert policy.select(state([0, 0, 0, 0, 0, 9], stage=2, step=3), 0.2).tolist() == [[0]]
    policy.reset()
    assert policy.select(state([0, 0, 0, 0, 0, 9], stage=2), 0.2).tolist() == [[5]]


def test_static_mask_entered_without_a_change_map_stays_evenly_spaced():
    policy = StaticMask()
    policy.reset()
    assert policy.select(state(None), 0.5).tolist() == [[1, 3, 5]]
    assert policy.select(state([9, 0, 9, 0, 9, 0], step=1), 0.5).tolist() == [[1, 3, 5]]


def test_full_mask_takes_every_token_whatever_the_ratio():
    for ratio in (0.1, 0.5, 1.0):
        assert FullMask().select(state(None, batch=2), ratio).tolist() == [list(range(6))] * 2
    assert FullMask().select(state([0] * 6), 0.1).dtype == torch.int64


# ---------------------------------------------------------------- the shipped state machine


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (TopK, {"takes_largest": True}),
        (StaticMask, {"takes_largest": True, "frozen_within_stage": True}),
        (FullMask, {"full": True}),
    ],
    ids=["top-k", "static", "full"],
)
def test_mask_state_machine_on_every_builtin_policy(factory, options):
    machine = mask_policy_machine(factory, name=factory.__name__, **options)
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


class Sticky:
    """A broken top-k: keeps the first mask forever."""

    def reset(self):
        self.indices = None

    def select(self, state, ratio):
        if self.indices is None or self.indices.shape[1] != mask_size(ratio, state.num_tokens):
            self.indices = top_k_mask(state.change_map, ratio, state.num_tokens, state.batch_size)
        return self.indices


class Drifting:
    """A broken static mask: re-chosen every step."""

    def reset(self):
        pass

    def select(self, state, ratio):
        return top_k_mask(state.change_map, ratio, state.num_tokens, state.batch_size)


@pytest.mark.parametrize(
    ("broken", "options", "message"),
    [
        (Sticky, {"takes_largest": True}, "left out while"),
        (Drifting, {"frozen_within_stage": True}, "the mask changed within stage"),
    ],
)
def test_mask_state_machine_catches_broken_policies(broken, options, message):
    machine = mask_policy_machine(broken, **options)
    strict = settings(
        MACHINE_SETTINGS,
        max_examples=200,
        phases=[Phase.generate],
        derandomize=True,
        report_multiple_bugs=False,
    )
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(machine, settings=strict)


# ---------------------------------------------------------------- the checkers themselves


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([[0, 2, 4]], None),
        ([[0, 2]], r"shape \(1, 2\)"),
        ([[0, 2, 2]], "strictly ascending"),
        ([[4, 2, 0]], "strictly ascending"),
        ([[0, 2, 6]], r"in \[0, 6\)"),
        ([[-1, 2, 4]], r"in \[0, 6\)"),
    ],
)
def test_check_mask(indices, message):
    tensor = torch.tensor(indices, dtype=torch.int64)
    if message is None:
        check_mask(tensor, 1, 6, 0.5)
    else:
        with pytest.raises(AssertionError, match=message):
            check_mask(tensor, 1, 6, 0.5)


def test_check_mask_wants_int64_tensors():
    with pytest.raises(AssertionError, match="int64"):
        check_mask(torch.tensor([[0, 2, 4]], dtype=torch.int32), 1, 6, 0.5)
    with pytest.raises(AssertionError, match="tensor"):
        check_mask([[0, 2, 4]], 1, 6, 0.5)


def test_check_takes_largest():
    cmap = torch.tensor([[0.0, 3.0, 1.0, 3.0]])
    check_takes_largest(torch.tensor([[1, 3]]), cmap)
    with pytest.raises(AssertionError, match="left out"):
        check_takes_largest(torch.tensor([[1, 2]]), cmap)
