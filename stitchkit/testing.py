"""Property tests for switch and mask policies, shipped so that plugin authors can run them on their own.

Needs hypothesis (``pip install "stitchkit[test]"``); pytest is not imported. Two state machines drive a
policy the way the engine does and check invariants after every step:

* :func:`switch_policy_machine`: ``reset(num_steps)``, then ``decide`` once per step with arbitrary
  per-sample changes ``D_t`` (``None`` at step 0 and possibly a few more, as in the engine), several
  generations in a row, sometimes abandoning one half-way. After every step: the decision is valid and runs
  what its stage declares, the stage never goes back and advances by at most one per step, no hybrid stage
  is skipped, and a policy that was reset decides exactly as a fresh one (no state leaks between
  generations); one that declares ``may_mask = False`` (the engine then records no K/V) never decides a
  hybrid step, and no hybrid step comes before the generation's first large step (the masked forward
  attends to K/V that a large step records; the engine refuses it). Optionally the decisions are compared
  with a simple reference model.
* :func:`mask_policy_machine`: stages entered one after another with a ratio each, ``select`` called with
  arbitrary change maps; after every call the mask is :func:`check_mask`-valid, and, as the policy promises,
  frozen within a stage and/or made of the largest changes.
* :func:`check_batch_matches_alone`: per-sample ``D_t`` sequences run as one batch through the engine's
  per-sample layer (:mod:`stitchkit.loop.per_sample`) give every sample the decisions it gets alone.

A policy may declare what each of its stages runs as ``stages``, a tuple of ``"large"``, ``"small"`` and
``"hybrid"`` indexed by stage (HybridStitch with one mask: ``("large", "hybrid", "small")``); the switch
machine then checks every decision against it and that hybrid stages are never skipped.

Example (in a test module; pytest collects ``TestCase``)::

    from hypothesis import settings
    from stitchkit.testing import switch_policy_machine
    from my_plugin import MyPolicy

    TestMyPolicy = switch_policy_machine(lambda: MyPolicy(threshold=0.2), num_steps=20).TestCase
    TestMyPolicy.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from stitchkit.masks import mask_size
from stitchkit.protocols import Decision, LoopState, MaskPolicy, SwitchPolicy

__all__ = [
    "DEFAULT_CHANGES",
    "DEFAULT_RATIOS",
    "STAGE_KINDS",
    "batch_decisions",
    "check_batch_matches_alone",
    "check_decision",
    "check_hybrid_never_skipped",
    "check_mask",
    "check_stage_step",
    "check_takes_largest",
    "decision_kind",
    "mask_policy_machine",
    "switch_policy_machine",
]

#: What a stage may run: the large model alone, the small model alone, both (a hybrid step), the large model
#: on masked tokens with the previous prediction elsewhere (``"ras"``), or no model (``"reuse"``).
STAGE_KINDS = ("large", "small", "hybrid", "ras", "reuse", "corrector")

#: Per-sample ``D_t`` values: the paper's thresholds and their neighbourhoods, exact ties, zero, and any
#: float in [0, 2].
DEFAULT_CHANGES = st.one_of(
    st.sampled_from([0.0, 1e-4, 0.004, 0.005, 0.006, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 1.0, 10.0]),
    st.floats(0.0, 2.0, allow_nan=False, width=32),
)

_NUM_STEPS = st.integers(1, 50)
_BATCH_SIZES = st.integers(1, 3)
_GRIDS = st.tuples(st.integers(1, 6), st.integers(1, 6))
#: Mask ratios: the paper's sizes, a whole mask, and any ratio in (0, 1].
DEFAULT_RATIOS = st.one_of(st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0]), st.floats(0.001, 1.0))


def _fail(message: str) -> None:
    raise AssertionError(message)


def decision_kind(decision: Decision) -> str:
    """``"hybrid"``, ``"ras"``, ``"reuse"``, ``"corrector"`` (an anchor or a corrected step), ``"large"`` or
    ``"small"``: what a decision runs."""
    if decision.corrected:
        return "corrector"
    if decision.hybrid:
        return "hybrid"
    if decision.masked:
        return "ras"
    if not (decision.large or decision.small):
        return "reuse"
    return "large" if decision.large else "small"


def check_decision(decision: object, stages: Sequence[str] | None = None) -> None:
    """A valid :class:`Decision` with an int stage >= 0, running what ``stages[stage]`` declares."""
    if not isinstance(decision, Decision):
        _fail(f"decide() must return a Decision, got {decision!r}")
    assert isinstance(decision, Decision)
    if isinstance(decision.stage, bool) or not isinstance(decision.stage, int) or decision.stage < 0:
        _fail(f"a decision's stage must be an int >= 0, got {decision.stage!r}")
    if stages is not None:
        if decision.stage >= len(stages):
            _fail(f"stage {decision.stage} is beyond the declared stages {tuple(stages)}")
        if decision_kind(decision) != stages[decision.stage]:
            _fail(f"stage {decision.stage} is declared {stages[decision.stage]!r} but ran {decision!r}")


def check_stage_step(previous: int | None, stage: int) -> None:
    """The stage never goes back and advances by at most one per step.

    ``previous`` is the last step's stage, ``None`` at a generation's first step: the loop starts in
    stage 0 and one transition may happen before step 0 (T-Stitch with ``small_fraction=0``), so the first
    stage is 0 or 1.
    """
    before = 0 if previous is None else previous
    if stage < before:
        _fail(f"the stage went back from {before} to {stage}")
    if stage > before + 1:
        _fail(f"the stage jumped from {before} to {stage} in one step")


def check_hybrid_never_skipped(stages_seen: Sequence[int], stages: Sequence[str]) -> None:
    """Every hybrid stage before the last stage reached was run for at least one step (§4.1)."""
    if not stages_seen:
        return
    reached, seen = max(stages_seen), set(stages_seen)
    for index, kind in enumerate(stages):
        if kind == "hybrid" and index < reached and index not in seen:
            _fail(f"hybrid stage {index} was skipped: stages were {list(stages_seen)}")


def check_mask(indices: object, batch: int, n: int, ratio: float) -> None:
    """``(batch, k)`` int64 token indices, ``k = max(1, floor(ratio * n + 0.5))``, each row strictly
    ascending (so unique) and in ``[0, n)``."""
    if not isinstance(indices, torch.Tensor):
        _fail(f"a mask must be a tensor, got {type(indices).__name__}")
    assert isinstance(indices, torch.Tensor)
    if indices.dtype != torch.int64:
        _fail(f"a mask must be int64, got {indices.dtype}")
    k = mask_size(ratio, n)
    if tuple(indices.shape) != (batch, k):
        _fail(f"mask of shape {tuple(indices.shape)} at ratio {ratio} of {n} tokens; expected {(batch, k)}")
    rows = indices.cpu()
    if k > 1 and not bool((rows[:, 1:] > rows[:, :-1]).all()):
        _fail(f"mask rows must be strictly ascending (sorted, unique): {rows.tolist()}")
    if bool((rows < 0).any()) or bool((rows >= n).any()):
        _fail(f"mask indices must be in [0, {n}): {rows.tolist()}")


def check_takes_largest(indices: torch.Tensor, change_map: torch.Tensor) -> None:
    """Per sample, no token left out changed more than a token taken (ties may go either way)."""
    values = change_map.detach().cpu().float()
    taken = torch.zeros_like(values, dtype=torch.bool).scatter_(1, indices.cpu(), True)
    for b in range(values.shape[0]):
        inside, outside = values[b][taken[b]], values[b][~taken[b]]
        if inside.numel() and outside.numel() and bool(outside.max() > inside.min()):
            _fail(
                f"sample {b}: token change {outside.max().item()} left out "
                f"while {inside.min().item()} was taken"
            )


def batch_decisions(factory: Callable[[], SwitchPolicy], sequences: Sequence[Sequence[float]],
                    leading_none: int = 1) -> list[list[Decision]]:
    """Each sample's decisions when ``len(sequences)`` samples run as one batch, as the engine runs them
    (:class:`stitchkit.loop.per_sample.SampleSwitch`): sample ``b``'s ``D_t`` at step ``i`` is
    ``sequences[b][i]``, and ``None`` for the first ``leading_none`` steps (nothing compared yet)."""
    from stitchkit.loop.per_sample import SampleSwitch

    k, num_steps = len(sequences), len(sequences[0])
    switch = SampleSwitch(factory(), k, num_steps)
    out: list[list[Decision]] = [[] for _ in range(k)]
    for i in range(num_steps):
        change = None if i < leading_none else torch.tensor([seq[i] for seq in sequences], dtype=torch.float32)
        decided, _ = switch.decide(_loop_state(i, num_steps, (2, 2), k, change=change))
        for b, decision in enumerate(decided):
            out[b].append(decision)
    return out


def check_batch_matches_alone(factory: Callable[[], SwitchPolicy], sequences: Sequence[Sequence[float]],
                              leading_none: int = 1) -> None:
    """A batch gives every sample the decisions it gets in a batch of one (:func:`batch_decisions`): what a
    prompt gets must not depend on the prompts beside it."""
    together = batch_decisions(factory, sequences, leading_none)
    for b, sequence in enumerate(sequences):
        alone = batch_decisions(factory, [sequence], leading_none)[0]
        if together[b] != alone:
            step = next(i for i, (x, y) in enumerate(zip(together[b], alone)) if x != y)
            _fail(f"sample {b} of {len(sequences)}: step {step} decided {together[b][step]!r} in the batch "
                  f"but {alone[step]!r} alone")


def _strategy(value: int | st.SearchStrategy) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _loop_state(step: int, num_steps: int, grid: tuple[int, int], batch: int, **kwargs) -> LoopState:
    sigma = 1.0 - step / num_steps
    return LoopState(
        step=step,
        num_steps=num_steps,
        timestep=1000.0 * sigma,
        sigma=sigma,
        num_tokens=grid[0] * grid[1],
        grid=grid,
        batch_size=batch,
        **kwargs,
    )


def switch_policy_machine(
    factory: Callable[[], SwitchPolicy],
    *,
    num_steps: int | st.SearchStrategy[int] = _NUM_STEPS,
    batch_size: int | st.SearchStrategy[int] = _BATCH_SIZES,
    changes: st.SearchStrategy[float] = DEFAULT_CHANGES,
    stages: Sequence[str] | None = None,
    reference: Callable[[], Callable[[LoopState], Decision]] | None = None,
    check_reset: bool = True,
    grid: tuple[int, int] = (2, 2),
    name: str | None = None,
) -> type[RuleBasedStateMachine]:
    """A hypothesis state machine that drives ``factory()``'s policy through whole generations.

    ``num_steps`` and ``batch_size`` are values or strategies, drawn per generation; ``changes`` draws one
    sample's ``D_t``. ``stages`` (default: the policy's own ``stages`` attribute, if any) declares what each
    stage runs. ``reference`` builds, per generation, a callable with the decisions the policy must make.
    With ``check_reset`` a fresh ``factory()`` policy is fed the same states from the second generation on
    and must decide the same. Use the returned class's ``TestCase`` as a test.
    """
    steps_strategy, batch_strategy = _strategy(num_steps), _strategy(batch_size)
    declared = tuple(stages) if stages is not None else None
    if declared is not None and any(kind not in STAGE_KINDS for kind in declared):
        raise ValueError(f"stages must be drawn from {STAGE_KINDS}, got {declared}")

    class SwitchPolicyMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.policy = factory()
            self.stages = declared if declared is not None else getattr(self.policy, "stages", None)
            self.generation = 0
            self.num_steps = 0
            self.step = 0
            self.batch = 1
            self.seen: list[int] = []
            self.has_changed = False
            self.large_seen = False
            self.twin: SwitchPolicy | None = None
            self.model: Callable[[LoopState], Decision] | None = None

        def _start(self, num_steps: int, batch: int) -> None:
            self.policy.reset(num_steps)
            self.twin = None
            if check_reset and self.generation > 0:
                self.twin = factory()
                self.twin.reset(num_steps)
            self.model = reference() if reference is not None else None
            self.generation += 1
            self.num_steps, self.batch, self.step = num_steps, batch, 0
            self.seen, self.has_changed, self.large_seen, self.anchored = [], False, False, False
            note(f"generation {self.generation}: reset({num_steps}), batch {batch}")

        def _step(self, change: torch.Tensor | None) -> None:
            change_map = None
            if change is not None:
                change_map = change[:, None].expand(-1, grid[0] * grid[1]).clone()
            state = _loop_state(
                self.step, self.num_steps, grid, self.batch, change=change, change_map=change_map
            )
            decision = self.policy.decide(state)
            note(f"step {self.step}: change {None if change is None else change.tolist()} -> {decision!r}")
            check_decision(decision, self.stages)
            if decision.masked and not getattr(self.policy, "may_mask", True):
                _fail(f"the policy declares may_mask = False but decided {decision!r}")
            if decision.hybrid and not self.large_seen:
                _fail(f"step {self.step}: a hybrid step before any large step ({decision!r}): the masked large "
                      "model attends to K/V a full large step records, and the engine refuses it")
            if decision.corrected and not decision.large and not self.anchored:
                _fail(f"step {self.step}: a corrected step before any anchor ({decision!r}): it corrects the large "
                      "output of an anchor step (large and small with reuse='corrected'), and the engine refuses it")
            self.anchored = self.anchored or (decision.corrected and decision.large)
            self.large_seen = self.large_seen or (decision.large and not decision.small)
            check_stage_step(self.seen[-1] if self.seen else None, decision.stage)
            if self.twin is not None:
                fresh = self.twin.decide(state)
                if fresh != decision:
                    _fail(
                        f"after reset() the policy decided {decision!r}, a fresh one {fresh!r}: state leaked"
                    )
            if self.model is not None:
                expected = self.model(state)
                if expected != decision:
                    _fail(f"step {self.step}: the policy decided {decision!r}, the reference {expected!r}")
            self.seen.append(decision.stage)
            if self.stages is not None:
                check_hybrid_never_skipped(self.seen, self.stages)
            self.step += 1

        @initialize(num_steps=steps_strategy, batch=batch_strategy)
        def start(self, num_steps: int, batch: int) -> None:
            self._start(num_steps, batch)

        @precondition(lambda self: self.step < self.num_steps and not self.has_changed)
        @rule()
        def step_before_any_change(self) -> None:
            self._step(None)

        # The engine has no change at step 0 (D_t compares a step with the one before), so neither does this.
        @precondition(lambda self: 0 < self.step < self.num_steps)
        @rule(data=st.data())
        def step_with_change(self, data: st.DataObject) -> None:
            values = data.draw(st.lists(changes, min_size=self.batch, max_size=self.batch), label="change")
            self.has_changed = True
            self._step(torch.tensor(values, dtype=torch.float32))

        @precondition(lambda self: self.step == self.num_steps)
        @rule(num_steps=steps_strategy, batch=batch_strategy)
        def next_generation(self, num_steps: int, batch: int) -> None:
            note(f"generation {self.generation} finished: stages {self.seen}")
            self._start(num_steps, batch)

        @precondition(lambda self: 0 < self.step < self.num_steps)
        @rule(num_steps=steps_strategy, batch=batch_strategy)
        def abandon_generation(self, num_steps: int, batch: int) -> None:
            note(f"generation {self.generation} abandoned at step {self.step} (an error in the engine)")
            self._start(num_steps, batch)

    SwitchPolicyMachine.__name__ = SwitchPolicyMachine.__qualname__ = name or "SwitchPolicyMachine"
    return SwitchPolicyMachine


def mask_policy_machine(
    factory: Callable[[], MaskPolicy],
    *,
    frozen_within_stage: bool = False,
    takes_largest: bool = False,
    full: bool = False,
    grid: st.SearchStrategy[tuple[int, int]] = _GRIDS,
    batch_size: int | st.SearchStrategy[int] = _BATCH_SIZES,
    ratios: st.SearchStrategy[float] = DEFAULT_RATIOS,
    name: str | None = None,
) -> type[RuleBasedStateMachine]:
    """A hypothesis state machine that drives ``factory()``'s mask policy through hybrid stages.

    Every ``select`` result must pass :func:`check_mask` (with ``full``: hold all ``N`` tokens instead).
    ``frozen_within_stage``: within a stage, every call returns the first call's mask. ``takes_largest``:
    the mask holds the tokens with the largest change (:func:`check_takes_largest`); for a frozen mask this
    is checked where it is chosen, at a stage's first call. No change map is given (``None``) until one has
    been, as in the engine's first steps.
    """
    batch_strategy = _strategy(batch_size)
    values = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0, allow_nan=False, width=32))

    class MaskPolicyMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.policy = factory()
            self.grid = (1, 1)
            self.batch = 1
            self.step = 0
            self.stage = 0
            self.ratio: float | None = None
            self.stage_mask: torch.Tensor | None = None
            self.has_map = False

        @property
        def n(self) -> int:
            return self.grid[0] * self.grid[1]

        def _start(self, grid: tuple[int, int], batch: int) -> None:
            self.policy.reset()
            self.grid, self.batch = grid, batch
            self.step, self.stage, self.ratio, self.stage_mask, self.has_map = 0, 0, None, None, False
            note(f"reset(): grid {grid}, batch {batch}")

        @initialize(grid=grid, batch=batch_strategy)
        def start(self, grid: tuple[int, int], batch: int) -> None:
            self._start(grid, batch)

        @rule(ratio=ratios)
        def enter_stage(self, ratio: float) -> None:
            self.stage += 1
            self.ratio, self.stage_mask = ratio, None
            note(f"enter stage {self.stage} at ratio {ratio}")

        @precondition(lambda self: self.ratio is not None)
        @rule(data=st.data())
        def select(self, data: st.DataObject) -> None:
            assert self.ratio is not None
            change_map = None
            if self.has_map or data.draw(st.booleans(), label="give a change map"):
                rows = data.draw(
                    st.lists(values, min_size=self.batch * self.n, max_size=self.batch * self.n), label="map"
                )
                change_map = torch.tensor(rows, dtype=torch.float32).view(self.batch, self.n)
                self.has_map = True
            state = _loop_state(
                self.step,
                max(self.step + 1, 50),
                self.grid,
                self.batch,
                change=None if change_map is None else change_map.mean(dim=1),
                change_map=change_map,
                stage=self.stage,
            )
            indices = self.policy.select(state, self.ratio)
            note(f"step {self.step}, stage {self.stage}, ratio {self.ratio}: {indices.tolist()}")
            if full:
                check_mask(indices, self.batch, self.n, 1.0)
            else:
                check_mask(indices, self.batch, self.n, self.ratio)
            first = self.stage_mask is None
            if frozen_within_stage and not first and not torch.equal(indices.cpu(), self.stage_mask):
                _fail(
                    f"the mask changed within stage {self.stage}: "
                    f"{self.stage_mask.tolist()} -> {indices.tolist()}"
                )
            if takes_largest and change_map is not None and (first or not frozen_within_stage):
                check_takes_largest(indices, change_map)
            if first:
                self.stage_mask = indices.cpu().clone()
            self.step += 1

        @rule(grid=grid, batch=batch_strategy)
        def new_generation(self, grid: tuple[int, int], batch: int) -> None:
            self._start(grid, batch)

    MaskPolicyMachine.__name__ = MaskPolicyMachine.__qualname__ = name or "MaskPolicyMachine"
    return MaskPolicyMachine
