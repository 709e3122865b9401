"""StaticMask (§4.3, Table 2): the top-k mask chosen once when a hybrid stage is entered, then frozen.

The ablation of the paper's per-step mask update (Algorithm 1, line 23): the mask is chosen with top-k's
rule (:func:`stitchkit.masks.top_k_mask`) from the change map at the first step of a hybrid stage, at that
stage's ratio, and reused for every step of the stage. A new stage (with several masks, the next, smaller
ratio) chooses again. So that the result always has the size the ratio asks for, the mask is also chosen
again if a switch policy changes the ratio (or the batch) within a stage; the built-in ones never do.
"""

from __future__ import annotations

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.masks import mask_size, top_k_mask
from stitchkit.protocols import LoopState


@attrs.define(kw_only=True)
class StaticMask:
    """Top-k at the entry of each hybrid stage, frozen until the stage ends."""

    _stage: int | None = attrs.field(init=False, default=None, repr=False, eq=False)
    _indices: torch.Tensor | None = attrs.field(init=False, default=None, repr=False, eq=False)

    def reset(self) -> None:
        self._stage = None
        self._indices = None

    def select(self, state: LoopState, ratio: float) -> torch.Tensor:
        shape = (state.batch_size, mask_size(ratio, state.num_tokens))
        if self._indices is None or state.stage != self._stage or tuple(self._indices.shape) != shape:
            self._indices = top_k_mask(state.change_map, ratio, state.num_tokens, state.batch_size)
            self._stage = state.stage
        return self._indices


@hookimpl
def register_mask_policies(register) -> None:
    register("static", StaticMask)
