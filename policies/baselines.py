"""The two reference points of Table 1: the large model alone and the small model alone, every step.

Both are one-stage switch policies (stage 0) without parameters. They never read the change, but the engine
still computes it for the trace; their measure is ``"x0"`` (Eq. 9 with Eq. 10, what HybridStitch switches
on), so a baseline's trace shows the very ``D_t`` curve that HybridStitch's thresholds are set against and
the thresholds can be tuned from a ``large`` run.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import Decision, LoopState


@attrs.define(kw_only=True)
class Large:
    """The large model on every token at every step (the quality reference, 1x speed)."""

    #: Only for the trace: the policy never reads the change.
    change_measure: ClassVar[str] = "x0"
    #: Never a hybrid step: the engine runs the large model's stock forward, recording no K/V.
    may_mask: ClassVar[bool] = False

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs, for :mod:`stitchkit.testing`."""
        return ("large",)

    def reset(self, num_steps: int) -> None:
        pass

    def decide(self, state: LoopState) -> Decision:
        return Decision(stage=0, large=True, small=False)


@attrs.define(kw_only=True)
class Small:
    """The small model on every token at every step (the speed reference)."""

    #: Only for the trace: the policy never reads the change.
    change_measure: ClassVar[str] = "x0"
    #: Never a hybrid step: the engine runs the large model's stock forward, recording no K/V.
    may_mask: ClassVar[bool] = False

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs, for :mod:`stitchkit.testing`."""
        return ("small",)

    def reset(self, num_steps: int) -> None:
        pass

    def decide(self, state: LoopState) -> Decision:
        return Decision(stage=0, large=False, small=True)


@hookimpl
def register_switch_policies(register) -> None:
    register("large", Large)
    register("small", Small)
