"""HybridStitch (§3.3, Algorithm 1): large model, then hybrid stages with shrinking masks, then small model.

With ``n = len(mask_ratios)`` masks there are ``n + 2`` stages (§3.2, Eq. 3-4: ``n + 1`` transitions):

* stage 0: the large model alone (Algorithm 1, lines 4-7; ``M_0 = 1`` in Eq. 3);
* stage ``i = 1..n``: the small model on every token and the large one on the masked ``M_i`` of them,
  stitched (lines 8-13), ``Decision(large=True, small=True, mask_ratio=M_i)``;
* stage ``n + 1``: the small model alone (lines 14-17).

After each step, if ``D_t < thresholds[stage]`` the stage advances by exactly one (lines 19-22): never two,
never back. §4.1: "even if D_t falls below 0.25 while still in the first stage, HybridStitch will still
transition to the second stage rather than skipping it". The engine keeps one copy per sample of a batch
(``stitchkit.loop.per_sample``), so ``D_t`` is one sample's; handed several, the largest is compared.
Eq. 8 asks for shrinking masks (``M_i > M_{i+1}``), and the thresholds shrink with them, since ``D_t``
falls as denoising proceeds.

Why ``change="x0"`` by default: Eq. 9-10 define ``X_t = Latent_t - sigma * noise_t``, which for flow
matching is exactly the x0 prediction ``x - sigma * v``, and ``D_t`` is the relative L1 distance of two
consecutive ones. Algorithm 1's line 19 differences the latents instead, but between two Euler steps
``|x_{t+1} - x_t| / |x_t| ≈ Δsigma · |v| / |x|`` is a few percent from the first step, so the paper's
thresholds (0.25-0.6) would fire at once and the large model would run for one step only. ``"latent"`` and
``"output"`` remain available through ``change``.

Why a separate ``mask_measure``: the switch reads one number per step (``D_t``), the top-k mask ranks tokens
by a per-token change map (line 23, ``Topk(diff)``). The paper's literal reading takes both from line 19's
latent difference; the x0 reading takes both from Eq. 9-10. ``mask_measure`` (default ``None``: the same
measure as ``change``, today's behaviour) lets the two be mixed, e.g. ``change="x0", mask_measure="latent"``.

Presets (§4.1, Tables 1-3): ``hybridstitch-10/-20/-30/-40``, multi-mask ``hybridstitch-20-10``,
``-30-10`` and ``-40-30``, and the ablations of Table 2, ``staticmask-N`` (mask chosen once per stage) and
``fulllarge-N`` (the large model on every token in the hybrid stage, only the masked part stitched). Every
preset carries the paper's sampler settings (50 steps at 768 × 768, :mod:`stitchkit.sampler`).
"""

from __future__ import annotations

import math
import numbers
from itertools import pairwise
from typing import Any

import attrs

from stitchkit.hookspecs import hookimpl
from stitchkit.errors import ConfigError
from stitchkit.protocols import Decision, LoopState, check_measure, check_measure_or_none
from stitchkit.sampler import PAPER_SAMPLER


def _as_tuple(value: Any) -> Any:
    """YAML lists and tuples become tuples; anything else is left for the validator to refuse."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _numbers(name: str, value: Any, example: str) -> None:
    if not isinstance(value, tuple) or not value:
        raise ConfigError(name, f"must be a non-empty list of numbers, got {value!r}", f"e.g. {example}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(f"{name}[{i}]", f"must be a number, got {v!r}", f"e.g. {example}")


def _strictly_decreasing(name: str, value: tuple, example: str) -> None:
    if any(b >= a for a, b in pairwise(value)):
        raise ConfigError(name, f"must be strictly decreasing, got {value!r}", f"e.g. {example}")


def _thresholds(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    _numbers(attribute.name, value, "(0.5, 0.3)")
    for i, v in enumerate(value):
        if v <= 0:
            raise ConfigError(f"{attribute.name}[{i}]", f"must be positive, got {v!r}", "e.g. (0.5, 0.3)")
    _strictly_decreasing(attribute.name, value, "(0.5, 0.3)")


def _mask_ratios(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    _numbers(attribute.name, value, "(0.3,) or (0.4, 0.3)")
    for i, v in enumerate(value):
        if not 0.0 < v < 1.0:
            raise ConfigError(
                f"{attribute.name}[{i}]",
                f"must be in (0, 1), got {v!r}",
                "a fraction of the image tokens, e.g. 0.3",
            )
    _strictly_decreasing(attribute.name, value, "(0.4, 0.3)")


@attrs.define(kw_only=True)
class HybridStitch:
    """Large alone (stage 0), hybrid at ``mask_ratios[i-1]`` (stage i), small alone (stage n+1).

    The stage advances by one whenever ``D_t < thresholds[stage]`` (the engine runs one copy per sample).
    """

    thresholds: tuple[float, ...] = attrs.field(
        default=(0.5, 0.3), converter=_as_tuple, validator=_thresholds
    )
    mask_ratios: tuple[float, ...] = attrs.field(default=(0.3,), converter=_as_tuple, validator=_mask_ratios)
    change: str = attrs.field(default="x0", validator=check_measure)
    #: The measure of the per-token change map the mask ranks; ``None``: ``change``'s.
    mask_measure: str | None = attrs.field(default=None, validator=check_measure_or_none)

    _stage: int = attrs.field(init=False, default=0, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        want = len(self.mask_ratios) + 1
        if len(self.thresholds) != want:
            raise ConfigError(
                "thresholds",
                f"needs {want} values (one per stage transition: len(mask_ratios) + 1), "
                f"got {len(self.thresholds)}",
                "e.g. thresholds (0.5, 0.3) with mask_ratios (0.3,)",
            )

    @property
    def change_measure(self) -> str:
        return self.change

    @property
    def stages(self) -> tuple[str, ...]:
        """What each stage runs: ``("large", "hybrid", ..., "small")``, for :mod:`stitchkit.testing`."""
        return ("large",) + ("hybrid",) * len(self.mask_ratios) + ("small",)

    @property
    def stage(self) -> int:
        """The stage decided at the last step (0 before the first)."""
        return self._stage

    def reset(self, num_steps: int) -> None:
        self._stage = 0  # Algorithm 1, line 1

    def decide(self, state: LoopState) -> Decision:
        # Lines 19-22, for the step before: one stage at most, and none after the last.
        last = len(self.thresholds)
        # Compared in float64, so that a threshold means exactly the number the user wrote.
        if (
            self._stage < last
            and state.change is not None
            and float(state.change.max()) < self.thresholds[self._stage]
        ):
            self._stage += 1
        if self._stage == 0:
            return Decision(stage=0, large=True, small=False)
        if self._stage == last:
            return Decision(stage=last, large=False, small=True)
        return Decision(
            stage=self._stage, large=True, small=True, mask_ratio=self.mask_ratios[self._stage - 1]
        )


def _presets() -> dict[str, dict[str, Any]]:
    single = {  # §4.1, Table 1: mask size -> thresholds
        10: (0.3, 0.25),
        20: (0.35, 0.25),
        30: (0.5, 0.3),
        40: (0.4, 0.3),
    }
    multi = {  # §4.4, Table 3
        (20, 10): (0.5, 0.3, 0.2),
        (30, 10): (0.5, 0.3, 0.2),
        (40, 30): (0.6, 0.5, 0.3),
    }
    presets: dict[str, dict[str, Any]] = {}
    for size, thresholds in single.items():
        params = {"thresholds": thresholds, "mask_ratios": (size / 100,), "sampler": PAPER_SAMPLER}
        presets[f"hybridstitch-{size}"] = params
        presets[f"staticmask-{size}"] = {**params, "mask": "static"}  # Table 2, StaticMask
        presets[f"fulllarge-{size}"] = {**params, "context": "full-large"}  # Table 2, FullLarge
    for sizes, thresholds in multi.items():
        name = "hybridstitch-" + "-".join(str(s) for s in sizes)
        presets[name] = {"thresholds": thresholds, "mask_ratios": tuple(s / 100 for s in sizes),
                         "sampler": PAPER_SAMPLER}
    return presets


#: Preset name -> parameters (plus the reserved keys ``mask`` / ``context`` naming the policies implied, and
#: ``sampler``: the paper's 50 steps at 768², §4.1, which the thresholds were chosen for; see
#: :mod:`stitchkit.sampler`).
PRESETS: dict[str, dict[str, Any]] = _presets()


@hookimpl
def register_switch_policies(register) -> None:
    register("hybridstitch", HybridStitch, presets={name: dict(params) for name, params in PRESETS.items()})
