"""SRDiffusion (Cheng et al., 2025): the large model sketches first, the small model renders to the end.

Stage 0 runs the large model, stage 1 the small one; the batch switches once, when the rule holds for every
sample, and never switches back. The HybridStitch paper (§4.1) runs it with threshold 0.005 and gives no
rule; it tuned that threshold for "comparable quality across all methods".

There is no official SRDiffusion code. Its adaptive switch exists in two public re-implementations, which
disagree with each other; each is a ``rule`` here, following the cited lines (read, not copied):

* ``rule="fastvideo"`` (the default): qimcis/FastVideo, branch ``wan21-sr`` (commit ccd4077),
  ``fastvideo/pipelines/stages/denoising.py``: ``_sr_select_model`` (lines 539-602) runs before step ``i``'s
  model call; ``_sr_record_model_output`` (604-616) keeps the last two values of ``x0 = latents - σ·noise_pred``
  computed *after* CFG by ``_sr_compute_denoised`` (618-653, called at 457-465). The measure is
  ``d = tanh(mean|x0_{i-1} - x0_{i-2}| / (mean|x0_{i-2}| + 1e-8))``, the *older* x0 in the denominator
  (lines 567-569): change measure ``"x0-prev"``. It switches when ``0 < d_prev - d < threshold`` or
  ``i >= max_switch_step`` (573-575). ``d_prev`` starts at ``0.0`` (85, 537) and is not updated while
  ``i < min_switch_step`` (559-560), so the first evaluated step always sees ``0 - d < 0``: the first
  small step is ``min + 1`` at the earliest, and ``max_switch_step = 30`` makes step 30 (0-based) the
  first small one. Defaults (``fastvideo/configs/pipelines/base.py`` lines 93-97): threshold 0.01,
  min 5, max 30.
* ``rule="xdit"``: qimcis/xDiT (commit 2c08920),
  ``xfuser/model_executor/pipelines/pipeline_fastwan_sr.py``: ``_SketchRenderTransformer`` wraps the
  transformer's ``forward`` (lines 344-368) and counts *calls* (``step_idx``). After each call it compares
  the raw output with the previous call's, ``d = tanh(mean|out - out_prev| / max(mean|out_prev|, 1e-6))``
  (313-327, older denominator): change measure ``"output"``. The first ``d`` only seeds ``d_prev``
  (321-323). When ``step_idx >= min`` and ``0 < d_prev - d < threshold`` or ``step_idx >= max``
  (349-357), the *next* call runs the small model: the first small step is ``min + 1`` at the earliest and
  ``max_switch_step = 30`` makes step 31 the first small one. Defaults (``SketchRenderConfig``, 46-51):
  threshold 0.01, min 5, max 30.

  *Approximation under CFG.* The wrapped pipeline (diffusers' Wan) calls the transformer twice per step,
  cond then uncond, so xDiT's ``step_idx`` counts calls (min 5 / max 30 are steps 2.5 / 15) and its
  ``d`` alternates between cond-vs-previous-uncond and uncond-vs-cond; a switch decided after a cond call
  runs that same step's uncond call on the small model. stitchkit's engine runs both CFG halves in one
  batched call per step, decides per step, and hands a change measure only the *guided* output
  (:class:`stitchkit.loop.change.StepTensors`). So this variant counts steps, not calls, and measures the
  guided output once per step. Without CFG (``guidance_scale <= 1``, FastWan's distilled use) it is exact.

  *Both*: the reference code averages over the whole batch tensor; here every sample is measured on its
  own and the batch switches when the rule holds for all of them (identical at batch 1, which is how the
  experiments run). The epsilons (1e-8, 1e-6) are replaced by a clamp at the smallest float32, which only
  differs for an all-zero reference.

Why ``fastvideo`` is the default: it is defined per denoising step on the guided prediction, which is
exactly what this engine decides on and measures, so it is reproduced without approximation under CFG,
and SD3 (the paper's family) always runs with CFG; ``xdit`` is faithful only without it.

stitchkit's earlier readings, kept under honest names:

* ``rule="tanh-drop"``: stitchkit's own reading: switch once ``0 < tanh(D_{t-1}) - tanh(D_t) < threshold``
  on any measure (preset ``srdiffusion-tanh-drop``: the ``"output"`` measure, threshold 0.005 as in the
  paper's §4.1, no min/max; it is not what either public implementation does). ``min_switch_step = s``
  keeps the large model before step ``s``; ``max_switch_step = s`` makes step ``s`` the first small step.
* ``rule="paper"``: the HybridStitch paper's reading (Eq. 9 and "if D_t is smaller than a specific threshold
  ... switches"): switch once ``D_t < threshold``; min/max as for ``tanh-drop``.

``change=None`` takes the rule's own measure (``fastvideo``: ``"x0-prev"``, ``xdit`` and ``tanh-drop``:
``"output"``, ``paper``: ``"x0"``); ``threshold``, ``min_switch_step`` and ``max_switch_step`` default to
the public implementations' 0.01, 5 and 30 (``null`` turns min/max off).
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.errors import ConfigError
from stitchkit.protocols import Decision, LoopState, check_measure_or_none

#: Each rule's own change measure (used when ``change`` is not given).
RULE_MEASURES = {"fastvideo": "x0-prev", "xdit": "output", "tanh-drop": "output", "paper": "x0"}
RULES = tuple(RULE_MEASURES)


def _positive(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(attribute.name, f"must be a number, got {value!r}", "a positive number, e.g. 0.01")
    if value <= 0:
        raise ConfigError(attribute.name, f"must be positive, got {value!r}", "e.g. 0.01")


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

    threshold: float = attrs.field(default=0.01, validator=_positive)
    rule: str = attrs.field(default="fastvideo", validator=_rule)
    change: str | None = attrs.field(default=None, validator=check_measure_or_none)
    min_switch_step: int | None = attrs.field(default=5, validator=_step_or_none)
    max_switch_step: int | None = attrs.field(default=30, validator=_step_or_none)

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
        return self.change or RULE_MEASURES[self.rule]

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs, for :mod:`stitchkit.testing`."""
        return ("large", "small")

    def reset(self, num_steps: int) -> None:
        self._stage = 0
        # FastVideo starts d_prev at 0.0 (denoising.py lines 85, 537); the others have none yet.
        self._prev_d = None

    def decide(self, state: LoopState) -> Decision:
        if self._stage == 0 and self._should_switch(state):
            self._stage = 1
        if self._stage == 0:
            return Decision(stage=0, large=True, small=False)
        return Decision(stage=1, large=False, small=True)

    # -- the rules -----------------------------------------------------------------------------------------
    def _should_switch(self, state: LoopState) -> bool:
        change = None if state.change is None else state.change.detach().double().cpu()  # exact thresholds
        if self.rule == "fastvideo":
            return self._fastvideo(state.step, change)
        if self.rule == "xdit":
            return self._xdit(state.step, change)
        holds = self._tanh_drop(change) if self.rule == "tanh-drop" else self._below(change)
        if self.max_switch_step is not None and state.step >= self.max_switch_step:
            return True
        return holds and (self.min_switch_step is None or state.step >= self.min_switch_step)

    def _fastvideo(self, step: int, change: torch.Tensor | None) -> bool:
        """Before step ``step``'s model call, with ``change`` comparing the x0 of steps ``step-2, step-1``."""
        if self.min_switch_step is not None and step < self.min_switch_step:
            return False  # lines 559-560: large, d_prev untouched
        if change is None:
            return False  # lines 562-563: fewer than two outputs recorded
        d = torch.tanh(change)
        prev = self._prev_d if self._prev_d is not None else torch.zeros_like(d)  # d_prev starts at 0.0
        self._prev_d = d
        drop = prev - d
        holds = bool(((drop > 0) & (drop < self.threshold)).all())
        return holds or (self.max_switch_step is not None and step >= self.max_switch_step)

    def _xdit(self, step: int, change: torch.Tensor | None) -> bool:
        """Replays xDiT's check after call ``step - 1`` (its ``step_idx``): true makes ``step`` small."""
        if change is None:
            return False  # no previous output: _compute_self_diff returns None (lines 314-315)
        call = step - 1
        d = torch.tanh(change)
        prev, self._prev_d = self._prev_d, d
        if prev is None:
            return False  # the first d only seeds d_prev (lines 321-323)
        if self.min_switch_step is not None and call < self.min_switch_step:
            return False  # diffs still collected (lines 360-362), no switch
        drop = prev - d
        holds = bool(((drop > 0) & (drop < self.threshold)).all())
        return holds or (self.max_switch_step is not None and call >= self.max_switch_step)

    def _tanh_drop(self, change: torch.Tensor | None) -> bool:
        """stitchkit's earlier rule: ``0 < tanh(D_{t-1}) - tanh(D_t) < threshold``; keeps ``d_{t-1}``."""
        if change is None:  # no comparison this step: the next d has no predecessor to compare with
            self._prev_d = None
            return False
        d = torch.tanh(change)
        prev, self._prev_d = self._prev_d, d
        if prev is None:
            return False
        drop = prev - d
        return bool(((drop > 0) & (drop < self.threshold)).all())

    def _below(self, change: torch.Tensor | None) -> bool:
        """The HybridStitch paper's reading: ``D_t < threshold``."""
        return change is not None and bool((change < self.threshold).all())


#: The variants by name, with their defaults spelled out so that ``stitchkit plugins`` shows them.
PRESETS = {
    "srdiffusion-fastvideo": {"rule": "fastvideo", "change": "x0-prev", "threshold": 0.01,
                              "min_switch_step": 5, "max_switch_step": 30},
    "srdiffusion-xdit": {"rule": "xdit", "change": "output", "threshold": 0.01,
                         "min_switch_step": 5, "max_switch_step": 30},
    "srdiffusion-tanh-drop": {"rule": "tanh-drop", "change": "output", "threshold": 0.005,
                              "min_switch_step": None, "max_switch_step": None},
}


@hookimpl
def register_switch_policies(register) -> None:
    register("srdiffusion", SRDiffusion, presets={name: dict(p) for name, p in PRESETS.items()})
