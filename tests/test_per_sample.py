"""Per-sample decisions: a batch of k gives every sample the decisions k runs of batch 1 give it.

Drives the engine's per-sample layer (:mod:`stitchkit.loop.per_sample`, what ``denoise`` calls every step) with
hypothesis-drawn per-sample ``D_t`` sequences, for every built-in switch policy and its presets, and
compares with one run per sample. The control shows the comparison can fail: a policy that decides for the
whole batch (the old behaviour, ``batched = True``) gives a sample other decisions in other company.
"""

import copy

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.errors import ConfigError
from stitchkit.loop.per_sample import SampleMasks, SampleSwitch
from stitchkit.protocols import Decision, LoopState
from stitchkit.registry import get_registry
from stitchkit.testing import DEFAULT_CHANGES, batch_decisions, check_batch_matches_alone

N, GRID = 16, (4, 4)


def builtin_switch_specs() -> list:
    """Every registered built-in switch policy by name, every preset, and the non-default rules."""
    registry = get_registry()
    specs: list = []
    for name in registry.names("switch"):
        entry = registry.entry("switch", name, "switch")
        specs.append(name)
        specs += list(getattr(entry, "presets", {}) or {})
    specs += [{"kind": "srdiffusion", "rule": "paper", "threshold": 0.2},
              {"kind": "srdiffusion", "threshold": 0.05, "min_switch_step": 3, "max_switch_step": 12},
              {"kind": "hybridstitch", "thresholds": [0.5, 0.3, 0.2], "mask_ratios": [0.4, 0.2]},
              {"kind": "t-stitch", "small_fraction": 0.3}]
    return specs


_PROTOTYPES: dict = {}


def create(spec):
    """A fresh policy for ``spec`` (built through the registry once, then copied: hypothesis runs many)."""
    key = repr(spec)
    if key not in _PROTOTYPES:
        _PROTOTYPES[key] = get_registry().create("switch", spec)[0] if isinstance(spec, (str, dict)) else spec
    return copy.deepcopy(_PROTOTYPES[key])


def _distinct(specs: list) -> list:
    """One spec per distinct policy (staticmask-N and fulllarge-N switch exactly as hybridstitch-N)."""
    seen, out = set(), []
    for spec in specs:
        key = repr(get_registry().create("switch", spec)[0])
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


SPECS = _distinct(builtin_switch_specs())


def state(step: int, num_steps: int, changes) -> LoopState:
    """A LoopState at ``step``, ``changes`` the batch's D_t (``None``: nothing compared yet)."""
    change = None if changes is None else torch.tensor(changes, dtype=torch.float32)
    return LoopState(step=step, num_steps=num_steps, timestep=1000.0 * (1 - step / num_steps),
                     sigma=1 - step / num_steps, num_tokens=N, grid=GRID, batch_size=len(changes or [0]),
                     change=change)


def run(spec, sequences, leading_none):
    return batch_decisions(lambda: create(spec), sequences, leading_none)


@st.composite
def batches(draw):
    k = draw(st.integers(2, 4))
    num_steps = draw(st.integers(1, 30))
    seqs = [draw(st.lists(DEFAULT_CHANGES, min_size=num_steps, max_size=num_steps)) for _ in range(k)]
    return seqs, draw(st.integers(1, 2))


@pytest.mark.parametrize("spec", SPECS,
                         ids=[s if isinstance(s, str) else "-".join(map(str, s.values())) for s in SPECS])
@settings(max_examples=25, deadline=None)
@given(drawn=batches())
def test_a_batch_gives_each_sample_its_batch_of_one_decisions(spec, drawn):
    sequences, leading_none = drawn
    check_batch_matches_alone(lambda: create(spec), sequences, leading_none)


@attrs.define
class WholeBatchHybrid:
    """The control: HybridStitch's rule on the batch's largest D_t, declared batched (the old engine)."""

    batched = True
    change_measure = "x0"
    threshold: float = 0.3
    _stage: int = 0

    def reset(self, num_steps: int) -> None:
        self._stage = 0

    def decide(self, state: LoopState) -> Decision:
        if self._stage == 0 and state.change is not None and float(state.change.max()) < self.threshold:
            self._stage = 1
        return Decision(stage=self._stage, large=self._stage == 0, small=self._stage == 1)


def test_the_control_a_batched_policy_depends_on_its_company():
    easy, hard = [0.1] * 5, [0.9] * 5
    assert run(WholeBatchHybrid(), [easy], 1)[0] != run(WholeBatchHybrid(), [easy, hard], 1)[0]
    with pytest.raises(AssertionError, match="sample 0 of 2: step 1 decided"):
        check_batch_matches_alone(WholeBatchHybrid, [easy, hard])
    # The same rule per sample (not batched) is what the built-ins get: the easy prompt is unaffected.
    per_sample = {"kind": "srdiffusion", "rule": "paper", "threshold": 0.3, "change": "x0"}
    assert run(per_sample, [easy], 1)[0] == run(per_sample, [easy, hard], 1)[0]


def test_a_batched_policy_may_answer_per_sample_and_is_checked():
    @attrs.define
    class Alternating:
        batched = True
        change_measure = "x0"

        def reset(self, num_steps: int) -> None:
            pass

        def decide(self, state):
            return [Decision(stage=0, large=b % 2 == 0, small=b % 2 == 1) for b in range(state.batch_size)]

    switch = SampleSwitch(Alternating(), 3, 4)
    decided, states = switch.decide(state(0, 4, [0.1, 0.2, 0.3]))
    assert [d.large for d in decided] == [True, False, True] and states is None

    class Wrong(Alternating):
        def decide(self, state):
            return [Decision(stage=0, large=True, small=False)]

    with pytest.raises(ConfigError, match=r"^switch: Wrong.decide returned .* for a batch of 3; a batched policy"):
        SampleSwitch(Wrong(), 3, 4).decide(state(0, 4, [0.1, 0.2, 0.3]))


def test_an_uncopyable_policy_gets_a_one_line_message():
    import threading

    @attrs.define
    class Locked:
        change_measure = "x0"
        lock: object = attrs.field(factory=threading.Lock)

        def reset(self, num_steps: int) -> None:
            pass

        def decide(self, state):
            return Decision(stage=0, large=True, small=False)

    SampleSwitch(Locked(), 1, 4)  # one sample: nothing to copy
    with pytest.raises(ConfigError) as err:
        SampleSwitch(Locked(), 2, 4)
    assert "\n" not in str(err.value) and str(err.value).startswith("switch: Locked cannot be copied per sample")


@pytest.mark.parametrize("mask", ["top-k", "static", "full"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_batch_gives_each_sample_its_batch_of_one_masks(mask, data):
    """Masks too: per-sample copies (StaticMask keeps per-sample state), each fed its own change map and
    stage; a sample's hybrid steps get the masks it gets alone."""
    k = data.draw(st.integers(2, 3))
    steps = data.draw(st.integers(1, 8))
    ratio = data.draw(st.sampled_from([0.1, 0.25, 0.5]))
    # Per sample and step: its stage (non-decreasing) and its change map.
    stages = [sorted(data.draw(st.lists(st.integers(1, 2), min_size=steps, max_size=steps))) for _ in range(k)]
    maps = torch.tensor(data.draw(st.lists(st.lists(st.lists(st.floats(0, 1, width=32), min_size=N, max_size=N),
                                                     min_size=k, max_size=k), min_size=steps, max_size=steps)))
    decisions = [[Decision(stage=s, large=True, small=True, mask_ratio=ratio) for s in row]
                 for row in zip(*stages)]
    together = SampleMasks(get_registry().create("mask", mask)[0], k)
    alone = [SampleMasks(get_registry().create("mask", mask)[0], 1) for _ in range(k)]
    for i in range(steps):
        batch_state = attrs.evolve(state(i, steps, [0.0] * k), change_map=maps[i])
        from stitchkit.loop.per_sample import sample_state

        states = [sample_state(batch_state, b) for b in range(k)]
        got = together.select(batch_state, states, decisions[i], list(range(k)), ratio, torch.device("cpu"))
        for b in range(k):
            one = sample_state(batch_state, b)
            want = alone[b].select(one, [one], [decisions[i][b]], [0], ratio, torch.device("cpu"))
            assert torch.equal(got[b:b + 1], want)


def test_a_batched_mask_policy_is_called_once_per_group_with_the_groups_maps():
    seen = []

    class FirstTokens:
        batched = True

        def reset(self):
            pass

        def select(self, state, ratio):
            seen.append((state.batch_size, state.change_map.clone()))
            return torch.arange(2).expand(state.batch_size, 2).clone()

    maps = torch.rand(3, N)
    batch_state = attrs.evolve(state(0, 4, [0.1, 0.2, 0.3]), change_map=maps)
    decisions = [Decision(stage=1, large=True, small=True, mask_ratio=0.1)] * 3
    got = SampleMasks(FirstTokens(), 3).select(batch_state, None, decisions, [0, 2], 0.1, torch.device("cpu"))
    assert got.shape == (2, 2) and len(seen) == 1
    assert seen[0][0] == 2 and torch.equal(seen[0][1], maps[[0, 2]])


def test_calls_are_priced_as_the_sum_of_their_groups():
    from stitchkit.cost.latency import Costs, predict_from_calls

    costs = Costs(large_ms=10.0, small_ms=2.0, masked_ms=[(0.25, 4.0)])
    # One mixed step of a batch of 3: two samples hybrid at 0.25, one large alone; small on the two.
    p = predict_from_calls([[("large", 1.0, 1), ("large", 0.25, 2), ("small", 1.0, 2)]], costs, batch=3)
    assert p.large_only_ms == 30.0
    assert p.hybrid_large_ms == 10.0 + 2 * 2.5 and p.hybrid_small_ms == 4.0
    assert p.refined_predicted_ms == 10.0 + 2 * 4.0 + 4.0
    for bad, path in (([[("medium", 1.0, 1)]], r"steps\[0\]\[0\]: unknown model"),
                      ([[("large", 0.0, 1)]], r"steps\[0\]\[0\]: token share"),
                      ([[("large", 1.0, 4)]], r"steps\[0\]\[0\]: 4 samples in a batch of 3")):
        with pytest.raises(ConfigError, match=path):
            predict_from_calls(bad, costs, batch=3)
