"""An outside stitchkit plugin in one file: the ``sandwich`` switch policy and the ``ema-top-k`` mask policy.

``sandwich``: the large model lays out the image (the first ``head`` of the steps) and polishes it (the
last ``tail``); the small model does the middle.

``ema-top-k``: top-k over an exponential moving average of the per-token change map instead of the last
step's map alone, so a token that changed a lot a step ago is not dropped because one step was calm (the
built-in ``top-k`` mask jumps between steps). It keeps state between steps: attrs classes are slotted, so the
state is a declared field (``attrs.field(init=False)``), reset by ``reset()``.

Installed, both are found through the ``stitchkit`` entry point named in this package's pyproject.toml:
``switch: sandwich`` / ``mask: ema-top-k`` work in YAML and ``pipe(..., switch="sandwich")`` in Python.
"""

import attrs
import torch

from stitchkit import ConfigError, hookimpl
from stitchkit.masks import evenly_spaced_indices, mask_size, top_k_indices
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


def _decay(instance, attribute, value):
    if not 0.0 <= value < 1.0:
        raise ConfigError(attribute.name, f"must be in [0, 1), got {value}")


@attrs.define(kw_only=True)
class EmaTopK:
    """The ``mask_size(ratio, N)`` tokens with the largest running average of the change map, per sample:
    ``avg <- decay * avg + (1 - decay) * change_map`` at every call."""

    decay: float = attrs.field(default=0.5, validator=_decay)
    average: torch.Tensor | None = attrs.field(init=False, default=None, repr=False)

    def reset(self) -> None:
        self.average = None

    def select(self, state, ratio: float) -> torch.Tensor:
        k = mask_size(ratio, state.num_tokens)
        if state.change_map is None:  # a hybrid step before any change was measured
            return evenly_spaced_indices(state.batch_size, state.num_tokens, k)
        current = state.change_map.float()
        if self.average is None or self.average.shape != current.shape:
            self.average = current.clone()
        else:
            self.average = self.decay * self.average + (1.0 - self.decay) * current
        return top_k_indices(self.average, k)


@hookimpl
def register_mask_policies(register):
    register("ema-top-k", EmaTopK)
