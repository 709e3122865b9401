"""RAS, region-adaptive sampling (microsoft/RAS, commit a9c5ec8): the large model recomputes the tokens
that change fast and the others reuse their previous output; periodic full "error-reset" steps.

What RAS does, from its code (files under ``src/ras/`` of microsoft/RAS; nothing copied):

* **Which steps** (``utils/ras_manager.py`` lines 47-55, 81-99): full model steps before
  ``scheduler_start_step`` and at every ``error_reset_steps`` entry; every other step up to
  ``scheduler_end_step`` is a RAS step. Its SD3 example (``scripts/Stable_Diffusion_3_example.sh``): 28
  steps, ``sample_ratio 0.5``, start 4, error resets at 12 and 20, ``starvation_scale 1``, ``high_ratio 0.3``.
  Here the start and reset steps are fractions of the run (4/28, 12/28, 20/28), so a preset works at any
  step count.
* **How many tokens** (``ras_manager.py`` line 48): ``(1 - sample_ratio) * N`` tokens are dropped (reuse
  their previous output) in a RAS step; the model computes the rest. Here the large model computes
  ``mask_size(sample_ratio, N)`` tokens, and exactly the other ones are dropped (RAS truncates the low and
  high parts separately and may drop one token fewer).
* **Ranking** (``schedulers/ras_scheduling_flow_match_euler_discrete.py`` lines 102-124, 201): per token the
  standard deviation over channels of the scheduler's own step ``(sigma_next - sigma) * model_output`` in
  the model's dtype (line 201; not the rounded ``next - latents``), averaged over the patch (the
  ``latent-std`` change measure, given the scheduler's sigma step by the loop), times ``exp(starvation_scale * drop_count)``; the count starts at ``-(steps + 1)`` (line 93) and
  grows by one each time a token is dropped (line 121), so a token dropped often ranks ever higher until it
  is recomputed (the starvation counter). Tokens are sorted ascending; the dropped ones are the lowest
  ``(1 - high_ratio)`` share and the highest ``high_ratio`` share of the drop count (line 119); the middle
  is recomputed.
* **Reuse** (same file, lines 191-192, 207-211): a dropped token's model output is the one cached at the
  step before, as it is; here ``Decision(reuse="as-is")``. The recomputed tokens attend to the others'
  cached K/V (``modules/attention_processor.py``): stitchkit's ``kv-cache`` context, whose full steps (the
  first ones and the error resets) record them.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.masks import mask_size
from stitchkit.protocols import Decision, LoopState

#: RAS's SD3 example (scripts/Stable_Diffusion_3_example.sh) as fractions of its 28 steps.
EXAMPLE_START = 4 / 28
EXAMPLE_RESETS = (12 / 28, 20 / 28)


def _step(fraction: float, num_steps: int) -> int:
    return int(fraction * num_steps + 0.5)


@attrs.define(kw_only=True)
class RASSwitch:
    """Full large steps before ``start`` and at the error resets; RAS steps (large on ``sample_ratio`` of
    the tokens, the previous prediction elsewhere) in between, up to ``end``. ``start``, ``end`` and
    ``error_resets`` are fractions of the run's steps. Stages: 0 the first full steps, then one stage per
    RAS stretch and per error reset, so stages only go forward."""

    sample_ratio: float = attrs.field(default=0.5, converter=float)
    start: float = attrs.field(default=EXAMPLE_START, converter=float)
    end: float = attrs.field(default=1.0, converter=float)
    error_resets: tuple[float, ...] = attrs.field(default=EXAMPLE_RESETS, converter=lambda v: tuple(sorted(map(float, v))))
    reuse: str = "as-is"
    change_measure: str = attrs.field(default="latent-std")
    _full_steps: frozenset[int] = attrs.field(factory=frozenset, init=False, repr=False)
    _stage: int = attrs.field(default=0, init=False, repr=False)
    _last: str | None = attrs.field(default=None, init=False, repr=False)

    @sample_ratio.validator
    def _check_ratio(self, _, value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"sample_ratio must be in (0, 1], got {value}")

    @error_resets.validator
    def _check_fractions(self, _, value: Sequence[float]) -> None:
        if any(not 0.0 <= f <= 1.0 for f in (*value, self.start, self.end)):
            raise ValueError("start, end and error_resets are fractions of the run, in [0, 1]")

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs: full steps, then RAS stretches, each error reset a full stage between."""
        return ("large",) + ("ras", "large") * len(self.error_resets) + ("ras", "large")

    def reset(self, num_steps: int) -> None:
        first_ras = max(1, _step(self.start, num_steps))  # RAS needs K/V from a full step first
        last_ras = min(num_steps - 1, _step(self.end, num_steps))
        full = set(range(first_ras)) | {_step(f, num_steps) for f in self.error_resets}
        full |= set(range(last_ras + 1, num_steps))
        self._full_steps = frozenset(full)
        self._stage, self._last = 0, None

    def decide(self, state: LoopState) -> Decision:
        kind = "large" if state.step in self._full_steps else "ras"
        if self._last is not None and kind != self._last:
            self._stage += 1
        self._last = kind
        if kind == "large":
            return Decision(stage=self._stage, large=True, small=False)
        return Decision(stage=self._stage, large=True, small=False, mask_ratio=self.sample_ratio, reuse=self.reuse)


@attrs.define(kw_only=True)
class RASMask:
    """RAS's token ranking with its starvation counter: the tokens the large model recomputes."""

    starvation_scale: float = attrs.field(default=1.0, converter=float)
    high_ratio: float = attrs.field(default=0.3, converter=float)
    _drops: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)  # (B, N) drop counts

    @high_ratio.validator
    def _check_high(self, _, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"high_ratio must be in [0, 1], got {value}")

    def reset(self) -> None:
        self._drops = None

    def select(self, state: LoopState, ratio: float) -> torch.Tensor:
        b, n = state.batch_size, state.num_tokens
        if self._drops is None or self._drops.shape != (b, n):
            self._drops = torch.full((b, n), -float(state.num_steps + 1))
        metric = (torch.zeros(b, n) if state.change_map is None else state.change_map.detach().float().cpu())
        metric = metric * torch.exp(self.starvation_scale * self._drops)
        order = torch.sort(metric, dim=1, stable=True).indices  # ascending
        dropped = n - mask_size(ratio, n)
        high = int(dropped * self.high_ratio)
        low = dropped - high
        kept = order[:, low:n - high]
        dropped_rows = torch.cat([order[:, :low], order[:, n - high:]], dim=1)
        self._drops.scatter_add_(1, dropped_rows, torch.ones_like(dropped_rows, dtype=self._drops.dtype))
        return kept.sort(dim=1).values


RAS_EXAMPLE = {"sample_ratio": 0.5, "mask": {"kind": "ras", "starvation_scale": 1.0, "high_ratio": 0.3},
           "context": "kv-cache"}


@hookimpl
def register_switch_policies(register) -> None:
    register("ras", RASSwitch, presets={
        "ras-50": RAS_EXAMPLE,
        "ras-25": {**RAS_EXAMPLE, "sample_ratio": 0.25},
    })


@hookimpl
def register_mask_policies(register) -> None:
    register("ras", RASMask)
