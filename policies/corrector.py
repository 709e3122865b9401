"""The small model as the cache's corrector (issue 21): a step cache whose skipped large steps are moved along
by the small model instead of standing still.

A step cache (MagCache, TeaCache, FirstBlockCache) skips the large model where its output changes little and
reuses what it computed last. On the shapes pair that beats every stitching method at equal quality
(``benchmarks/frontier.py``): a skipped step costs nothing, a small-model step about a fifth of a large one.
What a cache cannot know is *how* the output moved since its last computed step; a small model trained on
the same data can. So on a step the cache would skip, this policy runs the small model and predicts

    v_t  =  L_k + g · (S_t - S_k)

the large model's output at the last *anchor* step ``k`` plus a share ``g`` (``gain``) of the small model's
change since then (both models run at an anchor; the small one every step). The small model carries the
step-to-step motion, the large model the content.

The gain is measured, not assumed (``benchmarks/corrector_error.py``, on the large model's own trajectory,
anchors from step 4 of 20, relative L1 error of the predicted large output): the whole small-model change
(``g = 1``) overshoots. It beats reusing ``L_k`` at one step's distance only (0.100 against 0.114 on the
shapes pair) and is worse from two steps on (0.222 against 0.184 at four). Half of it (``g = 0.5``) beats
reuse at every distance measured (1-6), on both rungs: 0.091 / 0.116 / 0.165 against 0.114 / 0.139 / 0.184
at distances 1 / 2 / 4 on ``shapes`` (8 prompts), 0.094 / 0.123 / 0.174 on ``shapes-1x160`` (whose stronger
small model overshoots more). The least-squares gain of each pair is small and noisy (mean 0.10-0.18, sd
about 0.23 on 6 prompts), so the gain of the interval before does not predict the next one (no better than
reuse), and correcting in x0 instead of the velocity is far worse.

When to anchor is decided the way the caches decide, from an accumulated error against a budget, but the
error is *measured* on the small model rather than calibrated offline: ``D_j = |S_j - S_{j-1}| / |S_{j-1}|``
(the loop's ``small-output`` change measure) summed since the anchor, plus the last ``D`` as the estimate
of the step about to run (MagCache's accumulation of ``|1 - ratio|``, diffusers' ``hooks/mag_cache.py``,
with the small model in place of the calibrated ratios). A step is skipped while that sum stays within
``threshold`` and fewer than ``max_skip`` steps were skipped in a row (MagCache's ``K``).

Stages: ``small`` for the first ``small_head`` of the steps (T-Stitch's head, where the small model alone
draws the layout), then ``corrector``, whose first ``large_head`` of the steps are all anchors (MagCache's
retention steps: the large model computes them all; the small one runs beside it, so the first skip
already has a measured small-model change instead of one across the two models). The costs: every
corrector step runs the small model (``L_s``) and an anchor the large one too, so a run costs
``N_small-head · L_s + N_corrector · L_s + N_anchor · L_l``.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import attrs

from stitchkit.errors import ConfigError
from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import Decision, LoopState


def _fraction(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ConfigError(attribute.name, f"must be a fraction in [0, 1], got {value!r}", "e.g. 0.2")


def _non_negative(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigError(attribute.name, f"must be a number >= 0, got {value!r}", "e.g. 0.1")


def _skips(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(attribute.name, f"must be a whole number >= 1, got {value!r}",
                          "the most large steps skipped in a row, e.g. 4")


@attrs.define(kw_only=True)
class SmallCorrector:
    """Stage 0: the small model alone while ``(step + 1) / steps <= small_head`` (T-Stitch's rule); stage 1:
    anchors (both models) and corrected steps (the small model alone, ``L_k + (S_t - S_k)``), every step an
    anchor for the first ``large_head · steps`` (rounded down) of it."""

    change_measure: ClassVar[str] = "small-output"
    #: Never a hybrid step: the large model's stock forward, recording no K/V.
    may_mask: ClassVar[bool] = False
    stages: ClassVar[tuple[str, ...]] = ("small", "corrector")

    threshold: float = attrs.field(default=0.1, validator=_non_negative)
    #: The share of the small model's change since the anchor added to the anchor's large output.
    gain: float = attrs.field(default=0.5, validator=_non_negative)
    max_skip: int = attrs.field(default=4, validator=_skips)
    small_head: float = attrs.field(default=0.0, validator=_fraction)
    large_head: float = attrs.field(default=0.2, validator=_fraction)
    _anchor: int | None = attrs.field(default=None, init=False, repr=False)
    _error: float = attrs.field(default=0.0, init=False, repr=False)
    _skipped: int = attrs.field(default=0, init=False, repr=False)

    @property
    def correction_gain(self) -> float:
        """What the loop multiplies the small model's change by on a corrected step."""
        return self.gain

    def reset(self, num_steps: int) -> None:
        self._anchor, self._error, self._skipped = None, 0.0, 0

    def _heads(self, num_steps: int) -> tuple[int, int]:
        small = sum(1 for i in range(num_steps) if (i + 1) / num_steps <= self.small_head)
        return small, min(num_steps, small + int(self.large_head * num_steps))

    def decide(self, state: LoopState) -> Decision:
        small_end, large_end = self._heads(state.num_steps)
        if state.step < small_end:
            return Decision(stage=0, large=False, small=True)
        last = None if state.change is None else float(state.change[0])
        if state.step < large_end:
            last = None  # an anchor every step of the head
        if self._anchor is not None and last is not None and state.step - 1 > self._anchor:
            self._error += last  # the measured change of the step before, since the anchor
        estimate = self._error + (last or 0.0)  # ... and the step about to run, estimated by the last one
        if (self._anchor is not None and last is not None and self._skipped < self.max_skip
                and estimate <= self.threshold):
            self._skipped += 1
            return Decision(stage=1, large=False, small=True, reuse="corrected")
        self._anchor, self._error, self._skipped = state.step, 0.0, 0
        return Decision(stage=1, large=True, small=True, reuse="corrected")


@hookimpl
def register_switch_policies(register) -> None:
    register("small-corrector", SmallCorrector)
