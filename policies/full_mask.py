"""The full mask: every image token, whatever the ratio.

Not a method of the paper but the end-to-end test of the masked path: a hybrid step whose mask holds all
``N`` tokens leaves no token to the cached context, so it must reproduce the large model's full prediction;
any difference points at the gather/scatter or attention plumbing.
"""

from __future__ import annotations

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import LoopState


@attrs.define(kw_only=True)
class FullMask:
    """All ``N`` tokens for every sample, ``(B, N)`` int64, ignoring the ratio."""

    def reset(self) -> None:
        pass  # stateless

    def select(self, state: LoopState, ratio: float) -> torch.Tensor:
        device = state.change_map.device if state.change_map is not None else None
        row = torch.arange(state.num_tokens, dtype=torch.int64, device=device)
        return row.unsqueeze(0).repeat(state.batch_size, 1)


@hookimpl
def register_mask_policies(register) -> None:
    register("full", FullMask)
