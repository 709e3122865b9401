"""What the engine hands policies, and what it expects back.

The engine runs the paper's Algorithm 1 and asks three kinds of plugin for every decision:

* a :class:`SwitchPolicy` decides, at the start of each step, which models run (``Decision``); it sees the
  change ``D_t`` (Eq. 9) of the step before, so Algorithm 1's "if diff < threshold: stage += 1" (lines 19-22)
  happens inside ``decide`` of the next step;
* a :class:`MaskPolicy` picks the image tokens the large model recomputes in a hybrid step (line 23);
* a :class:`ContextProvider` runs the large model, fully or on the masked tokens, and owns whatever context
  the masked tokens attend to (the previous step's K/V in the paper, line 10).

Policies hold per-generation state and are reset by the engine at the start of every generation. They see
only the :class:`LoopState`; they never touch models, except the context provider, whose job that is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class LoopState:
    """The loop's state as policies see it at the start of step ``step``.

    ``change`` and ``change_map`` come from the step before (``None`` until two steps have been compared):
    ``change`` is ``D_t`` per sample, shape ``(B,)``; ``change_map`` the per-token change, shape ``(B, N)``
    (mean |ΔX| over channels and each token's p×p patch). ``B`` counts samples, not the two CFG halves.
    ``stage`` is the stage the switch policy decided for this step (``-1`` when handed to the switch policy
    itself, which owns the stage).
    """

    step: int
    num_steps: int
    timestep: float
    sigma: float
    num_tokens: int
    grid: tuple[int, int]
    batch_size: int
    change: "torch.Tensor | None" = None
    change_map: "torch.Tensor | None" = None
    stage: int = -1


@attrs.frozen(kw_only=True)
class Decision:
    """Which models run at one step.

    * ``large`` alone: the large model on all tokens (its context provider records what it needs);
    * ``small`` alone: the small model on all tokens;
    * both: the hybrid step: small on all tokens, large on ``mask_ratio`` of them, stitched (Algorithm 1,
      lines 10-12). ``mask_ratio`` must be in (0, 1] then and is ignored otherwise.
    """

    stage: int
    large: bool
    small: bool
    mask_ratio: float | None = None

    def __attrs_post_init__(self) -> None:
        if not (self.large or self.small):
            raise ValueError("a Decision must run at least one model")
        if self.large and self.small and not (self.mask_ratio is not None and 0.0 < self.mask_ratio <= 1.0):
            raise ValueError(f"a hybrid Decision needs mask_ratio in (0, 1], got {self.mask_ratio!r}")

    @property
    def hybrid(self) -> bool:
        return self.large and self.small


@attrs.frozen(kw_only=True)
class ModelInputs:
    """One transformer call's inputs, CFG halves included (batch ``2B`` when guidance is on, [uncond, cond])."""

    hidden_states: "torch.Tensor"
    timestep: "torch.Tensor"
    encoder_hidden_states: "torch.Tensor"
    pooled_projections: "torch.Tensor"


@runtime_checkable
class SwitchPolicy(Protocol):
    """Decides which models run at each step. ``change_measure`` names the ``D_t`` it reads
    (a key of :data:`stitchkit.change.MEASURES`).

    Optional class attributes the engine and tools read: ``may_mask = False`` for a policy that never
    takes a hybrid step (its large steps then need no K/V recording); ``stages``, one of ``"large"``,
    ``"small"``, ``"hybrid"`` per stage (for ``stitchkit.testing`` and ``stitchkit plan``); ``mask_ratios``,
    checked against Eq. 7-8 before a run; ``mask_measure``, the measure of the per-token change map a mask
    policy ranks (``None`` or absent: ``change_measure``'s).
    """

    change_measure: str

    def reset(self, num_steps: int) -> None:
        """Forget the last generation; ``num_steps`` is the new one's length."""

    def decide(self, state: LoopState) -> Decision:
        """The models to run at ``state.step``. Called exactly once per step, in order."""


@runtime_checkable
class MaskPolicy(Protocol):
    """Chooses the image tokens the large model recomputes in a hybrid step."""

    def reset(self) -> None:
        """Forget the last generation."""

    def select(self, state: LoopState, ratio: float) -> "torch.Tensor":
        """Token indices, shape ``(B, m)``, int64, sorted ascending, the same ``m`` for every sample."""


@runtime_checkable
class ContextProvider(Protocol):
    """Runs the large model and owns the context its masked tokens attend to.

    ``large`` is a :class:`stitchkit.models.sd3_masked.MaskedTransformer` (or any object with the same
    methods): ``forward(inputs, record=...)`` and ``forward_masked(inputs, indices)``.

    A provider whose masked step runs the large model on every token (the FullLarge ablation) sets the
    class attribute ``computes_all_tokens = True``, so the trace and the latency model count that work.
    """

    def reset(self) -> None:
        """Forget the last generation's context."""

    def full(self, large, inputs: ModelInputs) -> "torch.Tensor":
        """The large model on every token: prediction shaped like ``inputs.hidden_states``."""

    def masked(self, large, inputs: ModelInputs, indices: "torch.Tensor") -> "torch.Tensor":
        """The large model's prediction for ``indices`` (``(2B, m)``): tokens shaped ``(2B, m, p*p*C)``."""

    def release(self) -> None:
        """Free whatever the generation held (the K/V cache). Called when a generation ends, also on error."""
