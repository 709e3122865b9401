"""An outside stitchkit plugin in one file: the ``sandwich`` switch policy.

The large model lays out the image (the first ``head`` of the steps) and polishes it (the last ``tail``);
the small model does the middle. Installed, it is found through the ``stitchkit`` entry point named in this
package's pyproject.toml: ``switch: sandwich`` works in YAML and ``pipe(..., switch="sandwich")`` in Python.
"""

import attrs

from stitchkit import ConfigError, hookimpl
from stitchkit.protocols import Decision


def _fraction(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise ConfigError(attribute.name, f"must be in [0, 1], got {value}")


@attrs.define(kw_only=True)
class Sandwich:
    head: float = attrs.field(default=0.3, validator=_fraction)
    tail: float = attrs.field(default=0.2, validator=_fraction)
    num_steps: int = attrs.field(init=False, default=0)
    change_measure = "x0"  # not used for deciding, but every policy names the D_t its trace reports
    may_mask = False  # never hybrid: the large steps need no K/V recording

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def decide(self, state) -> Decision:
        position = (state.step + 1) / self.num_steps
        if position <= self.head:
            return Decision(stage=0, large=True, small=False)
        if position <= 1.0 - self.tail:
            return Decision(stage=1, large=False, small=True)
        return Decision(stage=2, large=True, small=False)


@hookimpl
def register_switch_policies(register):
    register("sandwich", Sandwich, presets={"sandwich-thin": {"head": 0.2, "tail": 0.1}})
