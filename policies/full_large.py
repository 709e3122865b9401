"""The paper's FullLarge ablation (§4.3, Table 2): the large model runs on every token, and only the
masked tokens' predictions replace the small model's.

"FullLarge applies the large model to the entire image during the second stage and updates only the
masked region in the small model's output." The large model sees the whole, fresh latent (no cached
context, so nothing stale) at the cost of a full large step, which isolates the quality effect of the K/V
cache from its speed-up. Nothing is recorded and nothing is held between steps.
"""

from __future__ import annotations

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.tokens import gather_tokens
from stitchkit.protocols import ModelInputs


@attrs.define(kw_only=True)
class FullLargeContext:
    """The large model on all tokens in every step; a hybrid step keeps the masked tokens' predictions."""

    #: The trace and the latency model count a hybrid step's large work as all N tokens.
    computes_all_tokens = True

    def reset(self) -> None:
        pass  # stateless

    def full(self, large, inputs: ModelInputs, *, rows: torch.Tensor | None = None,
             cache_rows: int | None = None) -> torch.Tensor:
        return large.forward(inputs, record=False)  # no cache: the rows a batch subset is do not matter

    def masked(self, large, inputs: ModelInputs, indices: torch.Tensor, *,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        return gather_tokens(large.forward(inputs, record=False), indices, large.patch_size)

    def release(self) -> None:
        pass  # holds nothing


@hookimpl
def register_context_providers(register) -> None:
    register("full-large", FullLargeContext)
