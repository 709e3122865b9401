"""The large model's masked forward for diffusers' ``WanTransformer3DModel`` (Wan 2.1 text-to-video), with
the previous step's K/V.

HybridStitch §3.3 and Algorithm 1, line 10, on video tokens. A Wan block is self-attention over all video
tokens (with 3-D rotary positions: frame, row, column), cross-attention from the video tokens to the text,
and a feed-forward, each modulated by the timestep (``scale_shift_table + temb``, one vector per sample).
Only self-attention mixes video tokens; everything else is per token. So the masked forward is the
unchanged diffusers blocks run on the ``m`` masked video tokens, with one change inside self-attention:

* the subset is gathered right after ``patch_embedding`` (all ``N`` tokens are embedded, then ``m`` kept),
  and each kept token takes its own rotary embedding (the ``rope`` table gathered at the same indices);
* **record** (a full forward, Algorithm 1 line 6): each block's self-attention stores its K and V after
  the q/k RMS norm and the rotary embedding, so cached keys keep their positions;
* **masked** (line 10): self-attention writes the fresh K/V of its ``m`` tokens into the stored ones (the
  cache is refreshed after every step, as §3.3 asks) and attends its ``m`` queries to all ``N`` keys;
* cross-attention to the text runs for the ``m`` queries only (its K/V are the text's, recomputed from the
  prompt embeddings each call as in the stock forward); the timestep modulation is unchanged.

Unlike SD3's MMDiT there is no text stream through the blocks, so a masked step computes nothing for
tokens outside the mask except their patch embedding and the text's cross-attention K/V.

Cache: one K and one V per block, ``(R, N, heads, head_dim)`` (``R`` model-batch rows, CFG halves
counted), i.e. ``2 · layers · R · N · D`` elements: Wan 2.1 14B (40 layers, D = 5120) at 480p × 81 frames
(N = 32,760) with CFG in bf16 is 2 · 40 · 2 · 32760 · 5120 · 2 bytes = 53.7 GB.

The cache rows follow issue 10's API (``rows``/``cache_rows``, see :meth:`WanMaskedTransformer.forward`):
batch row ``j`` of a call reads and writes cache row ``rows[j]``.

Example::

    with WanMaskedTransformer(transformer) as large:
        full = large.forward(inputs, record=True)          # (B, C, F, H, W), K/V recorded
        tokens = large.forward_masked(inputs, indices)     # (B, m, p_t*p_h*p_w*C), cache refreshed
    # transformer is exactly the stock model again, and the cache is freed
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

import torch

from stitchkit.families.wan.forward import wan_forward
from stitchkit.models.attention import DispatchedAttention, attend
from stitchkit.models.cuda_graphs import release_locked
from stitchkit.models.indices import check_indices, check_rows, flat_rows
from stitchkit.models.kv_cache import record_kv
from stitchkit.models.kv_runner import KVCacheRunner
from stitchkit.models.offload import offload_hooks
from stitchkit.tokens import token_grid

if TYPE_CHECKING:
    from stitchkit.protocols import ModelInputs


class Mode(enum.Enum):
    PLAIN = "plain"  # the stock self-attention, nothing stored
    RECORD = "record"  # the stock self-attention, K/V stored
    MASKED = "masked"  # m queries against the stored K/V, refreshed at the m tokens


class PassState:
    """Per-call state shared by the processors of one model (``Attention.forward`` passes no extras)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mode = Mode.PLAIN
        self.indices: torch.Tensor | None = None  # (B, m), masked mode
        self.rows: torch.Tensor | None = None  # (B,), the cache rows of the batch rows, or None: 0..B-1
        self.cache_rows: int | None = None  # R when recording a row subset
        self.flat: torch.Tensor | None = None  # masked mode: the m tokens' rows in a (R * N) view


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding (interleaved pairs), as ``WanAttnProcessor`` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class KVCacheSelfAttnProcessor(DispatchedAttention):
    """Self-attention (``attn1``) of one Wan block, owning that block's K/V cache.

    In :attr:`Mode.PLAIN` it computes what ``WanAttnProcessor`` computes for self-attention (no image
    context, no attention mask), through the same attention dispatch and backend
    (:mod:`stitchkit.models.attention`). ``rotary_emb`` is ``(cos, sin)``, shaped ``(1, n, 1, head_dim)`` for all
    tokens or ``(B, m, 1, head_dim)`` for the gathered ones.
    """

    def __init__(self, state: PassState) -> None:
        self.state = state
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("KVCacheSelfAttnProcessor serves self-attention without a mask only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # (B, n, heads, head_dim): the cache's layout
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)

        mode = self.state.mode
        if mode is Mode.RECORD:
            self._record(key, value)
        elif mode is Mode.MASKED:
            key, value = self._refresh(key, value)

        out = attend(self, query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _record(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store this call's K/V (Algorithm 1, line 6), in cache rows ``state.rows`` when given."""
        record_kv(self, key, value, self.state.rows, self.state.cache_rows)

    def _refresh(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the m fresh K/V rows into the cache; return the cache rows of this call (Algorithm 1, line 10)."""
        state = self.state
        heads, head_dim = key.shape[2:]
        if self.key is None or self.key.shape[2:] != key.shape[2:] or self.key.dtype != key.dtype:
            have = "none" if self.key is None else f"{tuple(self.key.shape)} {self.key.dtype}"
            raise RuntimeError(f"the recorded K/V ({have}) does not fit this masked call ({key.dtype}); record "
                               "a full forward with the same batch and latent size first")
        self.key.view(-1, heads, head_dim).index_copy_(0, state.flat, key.reshape(-1, heads, head_dim))
        self.value.view(-1, heads, head_dim).index_copy_(0, state.flat, value.reshape(-1, heads, head_dim))
        if state.rows is None:
            return self.key, self.value
        return self.key.index_select(0, state.rows), self.value.index_select(0, state.rows)


class WanMaskedTransformer(KVCacheRunner):
    """One ``WanTransformer3DModel`` with a masked forward.

    :meth:`begin` installs a :class:`KVCacheSelfAttnProcessor` on every block's self-attention (``attn1``;
    cross-attention keeps its own processor) and remembers the model's processors; :meth:`end` puts those
    very objects back and frees the cache. No diffusers class is patched: outside ``begin``/``end`` the
    model is the stock one.

    No CUDA-graph replay here (SD3's runner has it): at video sizes (tens of thousands of tokens) a step
    is bound by the GPU, not by kernel launches.
    """

    def __init__(self, model) -> None:
        from diffusers import WanTransformer3DModel

        if not isinstance(model, WanTransformer3DModel):
            raise TypeError(f"WanMaskedTransformer wraps a WanTransformer3DModel, got {type(model).__name__}")
        if model.config.get("image_dim") is not None or model.config.get("added_kv_proj_dim") is not None:
            raise TypeError("WanMaskedTransformer supports the text-to-video transformer (no image conditioning)")
        super().__init__()
        self.model = model
        self._state = PassState()

    # -- installing and removing ------------------------------------------------------------------

    def _kv_processor(self, name: str, original: object) -> KVCacheSelfAttnProcessor | None:
        """Self-attention (``attn1``) only: cross-attention keeps its own processor."""
        return KVCacheSelfAttnProcessor(self._state) if ".attn1." in name else None

    # cache_nbytes (KVCacheRunner): ``2 · layers · R · N · D`` elements.

    # -- shapes ------------------------------------------------------------------------------------

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.model.config.patch_size)

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        """Video tokens ``N`` of a latent ``frames x height x width``."""
        return math.prod(token_grid((frames, height, width), self.patch_size))

    # -- forwards ----------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, inputs: ModelInputs, *, record: bool, rows: torch.Tensor | None = None,
                cache_rows: int | None = None) -> torch.Tensor:
        """The stock forward on all tokens: ``(B, C, F, H, W)``. With ``record`` every block stores its K/V;
        with ``rows`` (and ``cache_rows``) into those rows of a cache of ``cache_rows`` rows."""
        self._require_begun()
        state = self._state
        if record and rows is not None:
            if cache_rows is None:
                raise ValueError("forward(record=True, rows=...) needs cache_rows")
            check_rows(rows, inputs.hidden_states.shape[0], cache_rows)
        try:
            state.mode = Mode.RECORD if record else Mode.PLAIN
            if record:
                release_locked(self._processors, clone=False)
                state.rows, state.cache_rows = rows, cache_rows
            return wan_forward(self.model, inputs)
        finally:
            state.reset()

    @torch.no_grad()
    def forward_masked(self, inputs: ModelInputs, indices: torch.Tensor, *,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction for video tokens ``indices`` (``(B, m)``, distinct per row):
        ``(B, m, p_t*p_h*p_w*C)``, token ``j`` of row ``b`` being ``patchify(full)[b, indices[b, j]]``.

        The other tokens are seen through the recorded K/V, which this call refreshes at ``indices``
        (Algorithm 1, line 10); with ``rows``, batch row ``j`` reads and writes cache row ``rows[j]``.
        """
        self._require_begun()
        if not self.has_cache:
            raise RuntimeError("forward_masked needs recorded K/V: call forward(inputs, record=True) first")
        x = inputs.hidden_states
        batch = x.shape[0]
        n = self.num_tokens(*x.shape[-3:])
        check_indices(indices, batch, n)
        cached = self._processors[0].key
        if cached.shape[1] != n:
            raise RuntimeError(f"the recorded K/V holds {cached.shape[1]} tokens, this call has {n}")
        if rows is None and cached.shape[0] != batch:
            raise RuntimeError(f"the recorded K/V has {cached.shape[0]} rows, this call {batch}: pass rows")
        if rows is not None:
            check_rows(rows, batch, cached.shape[0])
        if inputs.timestep.ndim != 1:
            raise NotImplementedError("per-token timesteps (Wan 2.2's expand_timesteps) are not supported")
        release_locked(self._processors, clone=True)
        state = self._state
        try:
            state.mode, state.indices, state.rows = Mode.MASKED, indices, rows
            state.flat = flat_rows(indices, n, rows)
            with offload_hooks(self.model):  # the body calls submodules: run the model's offload hooks
                return self._masked_body(inputs, indices)
        finally:
            state.reset()

    def _masked_body(self, inputs: ModelInputs, indices: torch.Tensor) -> torch.Tensor:
        """The blocks on the gathered tokens; mirrors ``WanTransformer3DModel.forward`` step by step."""
        model = self.model
        x = inputs.hidden_states.to(model.dtype)
        cos, sin = model.rope(x)  # (1, N, 1, head_dim) each: every token's rotary embedding
        rotary = (cos[0][indices], sin[0][indices])  # (B, m, 1, head_dim): the kept tokens' own
        hidden = model.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, N, D), frame-row-column order
        hidden = torch.gather(hidden, 1, indices[..., None].expand(-1, -1, hidden.shape[-1])).contiguous()
        temb, timestep_proj, text, _ = model.condition_embedder(inputs.timestep, inputs.encoder_hidden_states,
                                                                None, timestep_seq_len=None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        for block in model.blocks:
            hidden = block(hidden, text, timestep_proj, rotary)
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        return model.proj_out(hidden)

