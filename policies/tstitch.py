"""T-Stitch (Pan et al., 2024): the small model for the first steps, then the large one, at a fixed step.

The HybridStitch paper's baseline (§4.1, "Hyper-Parameters"): the small model for the first 40% of the steps
and the large model for the remaining 60%. The rule is the one in T-Stitch's own code
(``tstitch_sd_utils.py``: ``idx = 0 if (i + 1) / len(timesteps) <= unet_s_ratio else 1``): step ``i``
(0-based) runs the small model while ``(i + 1) / steps <= small_fraction``. With 50 steps and 0.4 that is
steps 0-19 small, 20-49 large.

Stage 0 is the small model, stage 1 the large one. The switch step is fixed, so the change is never read and
its measure is no parameter: it is ``"x0"`` only so that the trace shows the same ``D_t`` (Eq. 9-10) as
HybridStitch's, to compare the methods' runs step by step.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import attrs

from stitchkit.hookspecs import hookimpl
from stitchkit.errors import ConfigError
from stitchkit.protocols import Decision, LoopState


def _fraction(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(
            attribute.name, f"must be a number, got {value!r}", "a fraction in [0, 1], e.g. 0.4"
        )
    if not 0.0 <= value <= 1.0:
        raise ConfigError(attribute.name, f"must be in [0, 1], got {value!r}", "0: large only, 1: small only")


@attrs.define(kw_only=True)
class TStitch:
    """Small model while ``(step + 1) / steps <= small_fraction`` (stage 0), then large (stage 1)."""

    #: Only for the trace: the rule never reads the change.
    change_measure: ClassVar[str] = "x0"
    #: Never a hybrid step: the engine runs the large model's stock forward, recording no K/V.
    may_mask: ClassVar[bool] = False

    small_fraction: float = attrs.field(default=0.4, validator=_fraction)

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs, for :mod:`stitchkit.testing`."""
        return ("small", "large")

    def reset(self, num_steps: int) -> None:
        pass  # stateless: the rule is a function of the step alone

    def decide(self, state: LoopState) -> Decision:
        if (state.step + 1) / state.num_steps <= self.small_fraction:
            return Decision(stage=0, large=False, small=True)
        return Decision(stage=1, large=True, small=False)


@hookimpl
def register_switch_policies(register) -> None:
    register("t-stitch", TStitch)
