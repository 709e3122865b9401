"""SRDiffusion (Cheng et al., 2025): the large model sketches first, the small model renders to the end.

Stage 0 runs the large model, stage 1 the small one; the batch switches once, when the rule holds for every
sample, and never switches back. The HybridStitch paper (§4.1) runs it with threshold 0.005.

Two switch rules:

* ``rule="srdiffusion"`` (default) reproduces a public re-implementation of SRDiffusion's adaptive switch:
  per step it measures ``d_t = tanh(mean|out_t - out_{t-1}| / mean|out_{t-1}|)`` on the (guided) model
  output and switches once ``0 < d_{t-1} - d_t < threshold``, i.e. when the change has stopped falling
  fast. The policy applies the ``tanh`` and keeps ``d_{t-1}`` itself; the engine hands it the plain
  relative L1 distance. That is why the default measure is ``"output"``: it is the quantity that code
  compares, and 0.005 only means what it meant there on that quantity.
* ``rule="paper"``: the reading of the HybridStitch paper (Eq. 9 and "if D_t is smaller than a specific
  threshold ... switches"): switch once ``D_t < threshold``. Pick the measure with ``change``
  (``"x0"`` is Eq. 9-10's).

``min_switch_step = s`` keeps the large model before step ``s``; ``max_switch_step = s`` makes step ``s``
the first small step at the latest (both off by default).
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import attrs
import torch

import stitchkit
from stitchkit.change import check_measure
from stitchkit.errors import ConfigError
from stitchkit.protocols import Decision, LoopState

RULES = ("srdiffusion", "paper")


def _positive(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(attribute.name, f"must be a number, got {value!r}", "a positive number, e.g. 0.005")
    if value <= 0:
        raise ConfigError(attribute.name, f"must be positive, got {value!r}", "e.g. 0.005")


def _rule(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value not in RULES:
        raise ConfigError(attribute.name, f"unknown rule {value!r}", "known: " + ", ".join(RULES))


def _step_or_none(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(attribute.name, f"must be a step index >= 0 or null, got {value!r}", "e.g. 10")


@attrs.define(kw_only=True)
class SRDiffusion:
    """Large model (stage 0) until the switch rule holds for every sample, then small (stage 1) to the end."""

    #: Never a hybrid step: the engine runs the large model's stock forward, recording no K/V.
    may_mask: ClassVar[bool] = False

    threshold: float = attrs.field(default=0.005, validator=_positive)
    rule: str = attrs.field(default="srdiffusion", validator=_rule)
    change: str = attrs.field(default="output", validator=check_measure)
    min_switch_step: int | None = attrs.field(default=None, validator=_step_or_none)
    max_switch_step: int | None = attrs.field(default=None, validator=_step_or_none)

    _stage: int = attrs.field(init=False, default=0, repr=False, eq=False)
    _prev_d: torch.Tensor | None = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        lo, hi = self.min_switch_step, self.max_switch_step
        if lo is not None and hi is not None and hi < lo:
            raise ConfigError(
                "max_switch_step",
                f"is {hi}, before min_switch_step {lo}",
                "max_switch_step >= min_switch_step",
            )

    @property
    def change_measure(self) -> str:
        return self.change

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs, for :mod:`stitchkit.testing`."""
        return ("large", "small")

    def reset(self, num_steps: int) -> None:
        self._stage = 0
        self._prev_d = None

    def decide(self, state: LoopState) -> Decision:
        if self._stage == 0 and self._should_switch(state):
            self._stage = 1
        if self._stage == 0:
            return Decision(stage=0, large=True, small=False)
        return Decision(stage=1, large=False, small=True)

    def _should_switch(self, state: LoopState) -> bool:
        holds = self._rule_holds(state.change)
        if self.max_switch_step is not None and state.step >= self.max_switch_step:
            return True
        return holds and (self.min_switch_step is None or state.step >= self.min_switch_step)

    def _rule_holds(self, change: torch.Tensor | None) -> bool:
        """Whether the switch rule holds for every sample; keeps ``d_{t-1}`` for the next step."""
        if change is None:  # no comparison this step: the next d has no predecessor to compare with
            self._prev_d = None
            return False
        change = change.detach().double().cpu()  # float64: the threshold is exactly the number written
        if self.rule == "paper":
            return bool((change < self.threshold).all())
        d = torch.tanh(change)
        prev, self._prev_d = self._prev_d, d
        if prev is None:
            return False
        drop = prev - d
        return bool(((drop > 0) & (drop < self.threshold)).all())


@stitchkit.hookimpl
def register_switch_policies(register) -> None:
    register("srdiffusion", SRDiffusion)
