"""The paper's context: the large model's masked tokens attend to the K/V of the step before.

HybridStitch §3.3 ("Masked Generation") and Algorithm 1: every full large step records each layer's image
K/V (line 6, ``noise, prev_KV <- Large_Model(latent)``); a hybrid step recomputes only the masked tokens,
which attend to that cache, and writes their fresh K/V into it (line 10), so the cache stays up to date
for the next step's mask. The cache lives in the :class:`~stitchkit.families.sd3.masked.MaskedTransformer`
(``2 * layers * B * N * D`` elements, plus text scratch rows and SD3.5 Medium's ``attn2`` layers; about
3.3 GB for SD3.5 Large at 1024² with CFG in bf16); :meth:`KVCacheContext.release` frees it.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import ModelInputs


@attrs.define(kw_only=True)
class KVCacheContext:
    """Full large steps record K/V; masked steps attend to it and refresh it at the masked tokens."""

    _large: Any = attrs.field(default=None, init=False, repr=False)  # whose cache release() frees

    def reset(self) -> None:
        self.release()

    def full(self, large, inputs: ModelInputs, *, rows: torch.Tensor | None = None,
             cache_rows: int | None = None) -> torch.Tensor:
        self._large = large
        if rows is None:
            return large.forward(inputs, record=True)
        return large.forward(inputs, record=True, rows=rows, cache_rows=cache_rows)  # these samples' rows

    def masked(self, large, inputs: ModelInputs, indices: torch.Tensor, *,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        self._large = large
        if rows is None:
            return large.forward_masked(inputs, indices)
        return large.forward_masked(inputs, indices, rows=rows)

    def release(self) -> None:
        if self._large is not None:
            self._large.free_cache()
            self._large = None


@hookimpl
def register_context_providers(register) -> None:
    register("kv-cache", KVCacheContext)
