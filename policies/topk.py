"""Top-k mask (Algorithm 1, line 23: ``Mask <- Topk(diff)``): re-chosen every step, per sample.

The large model recomputes the ``k = max(1, floor(ratio * N + 0.5))`` tokens whose change was largest at
the step before: "larger values indicate regions undergoing substantial changes. Such regions are considered
unstable and therefore require more sophisticated processing by the large model" (§3.3). The change map is
the engine's (mean |ΔX| over channels and each token's patch, of the switch policy's change measure).

When there is no change map yet (a custom switch policy went hybrid at the first step or two, before any
change was known), there is nothing to rank and the mask falls back to ``k`` evenly spaced tokens.
"""

from __future__ import annotations

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.masks import top_k_mask
from stitchkit.protocols import LoopState


@attrs.define(kw_only=True)
class TopK:
    """The ``round(ratio * N)`` tokens with the largest change at the last step, per sample."""

    def reset(self) -> None:
        pass  # stateless

    def select(self, state: LoopState, ratio: float) -> torch.Tensor:
        return top_k_mask(state.change_map, ratio, state.num_tokens, state.batch_size)


@hookimpl
def register_mask_policies(register) -> None:
    register("top-k", TopK)
