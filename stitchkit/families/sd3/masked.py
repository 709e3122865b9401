"""The large model's masked forward for diffusers' ``SD3Transformer2DModel``, with the previous step's K/V.

HybridStitch §3.3 ("Masked Generation"), Algorithm 1, line 10: ``noise_large, prev_KV <- Large_Model(
latent[Mask], prev_KV)``. In a hybrid step the large model recomputes only ``m`` of the ``N`` image tokens;
every other image token is seen through the K/V that the large model produced for it the last time it was
computed. Everything in an MMDiT block but attention is per token (AdaLN-Zero, norms, gates, residuals,
feed-forwards), so the masked forward is the unchanged diffusers blocks run on ``m`` image tokens plus all
``T`` text tokens, with one change inside attention:

* **record** (a full forward, Algorithm 1 line 6): each attention layer stores its image K and V (after
  qk-norm);
* **masked** (line 10): each layer writes the fresh K/V of its ``m`` tokens into the stored full-length K/V
  (so the cache is refreshed after every step, as §3.3 asks: "HybridStitch also updates the KV cache after
  each iteration") and attends its ``m`` image queries, plus the ``T`` text queries, to all ``N + T`` keys.

The text stream is computed in full in every block, as later blocks need it; in the last block
(``context_pre_only``) its output is thrown away, so no text queries are computed there, in any mode.

Cache layout and size. One K and one V tensor per Attention module, shaped ``(B, L, heads, head_dim)``:
the layout the projections produce and diffusers' attention dispatch takes, so fresh rows go in with one
``index_copy_`` and no transpose, and attention reads the whole buffer without a concatenation.
For the joint attention ``L = N + T``, laid out [image, text]: the ``N`` image rows are the cache proper,
the ``T`` text rows are scratch space written afresh by every call. SD3.5 Medium's image-only ``attn2``
has ``L = N``. In elements::

    2 * B * D * (layers * (N + T) + dual_attention_layers * N)      # D = heads * head_dim

(the paper's ``2 * layers * B * N * D``, plus the scratch rows and the ``attn2`` layers). SD3.5 Large at
1024² (N = 4096, T = 333) with CFG (B = 2) in bf16: 2 * 2 * 2432 * 38 * 4429 * 2 bytes = 3.3 GB.
:attr:`MaskedTransformer.cache_nbytes` gives the size held; :meth:`MaskedTransformer.end` frees it.

Example::

    with MaskedTransformer(transformer) as large:          # installs the processors; end() restores them
        full = large.forward(inputs, record=True)          # (B, C, H, W), K/V recorded
        tokens = large.forward_masked(inputs, indices)     # (B, m, p*p*C), cache refreshed at indices
    # transformer is exactly the stock model again, and the cache is freed
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

from stitchkit.models.attention import DispatchedAttention, attend
from stitchkit.models.cuda_graphs import CudaGraphs, cuda_graphs_enabled, release_locked
from stitchkit.models.indices import check_indices
from stitchkit.models.kv_cache import cache_buffers
from stitchkit.models.kv_runner import KVCacheRunner
from stitchkit.models.offload import has_offload_hooks, offload_hooks

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

    from stitchkit.protocols import ModelInputs


class Mode(enum.Enum):
    """What the processors do on the current call."""

    PLAIN = "plain"  # the stock attention, nothing stored
    RECORD = "record"  # the stock attention, image K/V stored
    MASKED = "masked"  # m image queries against the stored K/V, refreshed at the m tokens


class PassState:
    """Per-call state shared by all processors of one model.

    ``Attention.forward`` drops keyword arguments that a processor's ``__call__`` does not name, so the
    mode and the token indices reach the processors through this object instead.
    """

    def __init__(self) -> None:
        self.mode = Mode.PLAIN
        self.indices: torch.Tensor | None = None  # (B, m), masked mode only
        self.num_tokens = 0  # N, masked mode only
        #: The cache rows the call's batch rows are (``None``: all of them, in order); record/masked modes.
        self.rows: torch.Tensor | None = None
        self.cache_rows = 0  # rows of the cache a recording call with ``rows`` allocates
        self._flat: dict[int, torch.Tensor] = {}

    def flat_index(self, length: int) -> torch.Tensor:
        """The masked tokens' rows in a ``(R * length, ...)`` view of a ``(R, length, ...)`` cache."""
        flat = self._flat.get(length)
        if flat is None:
            assert self.indices is not None
            rows = self.rows
            if rows is None:
                rows = torch.arange(self.indices.shape[0], device=self.indices.device)
            flat = self._flat[length] = (self.indices + rows[:, None] * length).reshape(-1)
        return flat

    def reset(self) -> None:
        self.mode, self.indices, self.num_tokens = Mode.PLAIN, None, 0
        self.rows, self.cache_rows = None, 0
        self._flat.clear()


class KVCacheAttnProcessor(DispatchedAttention):
    """Attention for one ``Attention`` module of an SD3 block (joint ``attn`` or image-only ``attn2``).

    In :attr:`Mode.PLAIN` it computes what ``JointAttnProcessor2_0`` computes, but through diffusers'
    attention dispatch (:mod:`stitchkit.models.attention`), so ``set_attention_backend`` applies to it. It owns this module's K/V
    cache (``key``, ``value``: ``(B, L, heads, head_dim)``, see the module docstring), so one instance must
    serve one module: ``JointTransformerBlock`` hands the same processor to ``attn`` and ``attn2``, and
    their caches differ.
    """

    def __init__(self, state: PassState) -> None:
        self.state = state
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if attention_mask is not None:
            raise NotImplementedError("KVCacheAttnProcessor takes no attention mask (SD3 uses none)")
        batch, n = hidden_states.shape[:2]
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // heads
        # (B, n, heads, head_dim) rather than diffusers' (B, heads, n, head_dim): the cache's layout.
        query = query.view(batch, n, heads, head_dim)
        key = key.view(batch, n, heads, head_dim)
        value = value.view(batch, n, heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        joint = encoder_hidden_states is not None
        # The last block's text output is discarded (context_pre_only): its text queries are not computed.
        text_queries = joint and not attn.context_pre_only
        text_key = text_value = None
        if joint:
            t = encoder_hidden_states.shape[1]
            text_key = attn.add_k_proj(encoder_hidden_states).view(batch, t, heads, head_dim)
            text_value = attn.add_v_proj(encoder_hidden_states).view(batch, t, heads, head_dim)
            if attn.norm_added_k is not None:
                text_key = attn.norm_added_k(text_key)
            if text_queries:
                text_query = attn.add_q_proj(encoder_hidden_states).view(batch, t, heads, head_dim)
                if attn.norm_added_q is not None:
                    text_query = attn.norm_added_q(text_query)
                query = torch.cat([query, text_query], dim=1)

        mode = self.state.mode
        if mode is Mode.MASKED:
            key, value = self._refresh(key, value, text_key, text_value)
        elif mode is Mode.RECORD:
            key, value = self._record(key, value, text_key, text_value)
        elif joint:
            key = torch.cat([key, text_key], dim=1)
            value = torch.cat([value, text_value], dim=1)

        out = attend(self, query, key, value).reshape(batch, -1, heads * head_dim).to(query.dtype)
        image = attn.to_out[1](attn.to_out[0](out[:, :n]))
        if not joint:
            return image
        return image, (attn.to_add_out(out[:, n:]) if text_queries else None)

    def _record(self, key, value, text_key, text_value):
        """Store this call's K/V (Algorithm 1, line 6: ``noise, prev_KV <- Large_Model(latent)``)."""
        if self.state.rows is not None:
            return self._record_rows(key, value, text_key, text_value)
        n = key.shape[1]
        length = n + (0 if text_key is None else text_key.shape[1])
        cached_key, cached_value = cache_buffers(self, (key.shape[0], length, *key.shape[2:]), key, value)
        if text_key is not None:
            cached_key[:, n:].copy_(text_key)
            cached_value[:, n:].copy_(text_value)
        cached_key[:, :n].copy_(key)
        cached_value[:, :n].copy_(value)
        return cached_key, cached_value

    def _record_rows(self, key, value, text_key, text_value):
        """Store this call's K/V in cache rows ``state.rows`` of a ``state.cache_rows``-row cache; the call
        attends to its own K/V only, as the stock attention does."""
        rows = self.state.rows
        if text_key is not None:
            key, value = torch.cat([key, text_key], dim=1), torch.cat([value, text_value], dim=1)
        cached_key, cached_value = cache_buffers(self, (self.state.cache_rows, *key.shape[1:]), key, value)
        cached_key.index_copy_(0, rows, key)
        cached_value.index_copy_(0, rows, value)
        return key, value

    def _refresh(self, key, value, text_key, text_value):
        """Write the m fresh image K/V rows into the cache and return the whole of it (Algorithm 1, line 10).

        With ``state.rows`` the call's batch rows are those rows of the cache: the fresh rows go there and
        attention reads a gathered copy of those rows (text scratch rows written into the copy)."""
        state = self.state
        batch, _, heads, head_dim = key.shape
        length = state.num_tokens + (0 if text_key is None else text_key.shape[1])
        if state.rows is not None:
            return self._refresh_rows(key, value, text_key, text_value, length)
        if self.key is None or self.key.shape != (batch, length, heads, head_dim) or self.key.dtype != key.dtype:
            have = "none" if self.key is None else f"{tuple(self.key.shape)} {self.key.dtype}"
            raise RuntimeError(
                f"the recorded K/V ({have}) does not fit this masked call ({(batch, length, heads, head_dim)} "
                f"{key.dtype}); record a full forward with the same batch, latent size and prompt length first"
            )
        rows = state.flat_index(length)
        self.key.view(-1, heads, head_dim).index_copy_(0, rows, key.reshape(-1, heads, head_dim))
        self.value.view(-1, heads, head_dim).index_copy_(0, rows, value.reshape(-1, heads, head_dim))
        self._write_text(state.num_tokens, text_key, text_value)
        return self.key, self.value

    def _refresh_rows(self, key, value, text_key, text_value, length):
        state = self.state
        _, _, heads, head_dim = key.shape
        if (self.key is None or self.key.shape[1:] != (length, heads, head_dim) or self.key.dtype != key.dtype):
            have = "none" if self.key is None else f"{tuple(self.key.shape)} {self.key.dtype}"
            raise RuntimeError(
                f"the recorded K/V ({have}) does not fit this masked call ((R, {length}, {heads}, {head_dim}) "
                f"{key.dtype}); record a full forward of these rows with the same latent size and prompt length "
                "first"
            )
        rows = state.flat_index(length)
        self.key.view(-1, heads, head_dim).index_copy_(0, rows, key.reshape(-1, heads, head_dim))
        self.value.view(-1, heads, head_dim).index_copy_(0, rows, value.reshape(-1, heads, head_dim))
        sub_key, sub_value = self.key.index_select(0, state.rows), self.value.index_select(0, state.rows)
        if text_key is not None:
            sub_key[:, state.num_tokens:].copy_(text_key)
            sub_value[:, state.num_tokens:].copy_(text_value)
        return sub_key, sub_value

    def _write_text(self, n, text_key, text_value):
        if text_key is not None:
            self.key[:, n:].copy_(text_key)
            self.value[:, n:].copy_(text_value)


def _inputs(hidden_states, timestep, encoder_hidden_states, pooled_projections) -> "ModelInputs":
    from stitchkit.protocols import ModelInputs

    return ModelInputs(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                       pooled_projections=pooled_projections)


def plain_forward(model: SD3Transformer2DModel, inputs: "ModelInputs") -> torch.Tensor:
    """The stock transformer on ``inputs``: the prediction ``(B, C, H, W)``."""
    return model(hidden_states=inputs.hidden_states, timestep=inputs.timestep,
                 encoder_hidden_states=inputs.encoder_hidden_states,
                 pooled_projections=inputs.pooled_projections, return_dict=False)[0]


class MaskedTransformer(KVCacheRunner):
    """One ``SD3Transformer2DModel`` (SD3 Medium, SD3.5 Large, SD3.5 Medium) with a masked forward.

    :meth:`begin` installs one :class:`KVCacheAttnProcessor` per Attention module and remembers the
    model's own processors; :meth:`end` puts those very objects back and frees the cache. Nothing else of
    the model is touched, and no diffusers class is patched: outside ``begin``/``end`` the model is the
    stock one, and between them calling it directly gives the stock result.
    """

    def __init__(self, model: SD3Transformer2DModel) -> None:
        if not isinstance(model, SD3Transformer2DModel):
            raise TypeError(f"MaskedTransformer wraps an SD3Transformer2DModel, got {type(model).__name__}")
        super().__init__()
        self.model = model
        self._state = PassState()
        self._recorded: torch.Tensor | None = None  # (rows,) bool on the CPU: which cache rows hold K/V
        #: On CUDA, replay masked forwards from a CUDA graph (``STITCHKIT_CUDA_GRAPHS=0`` turns it off):
        #: with a few hundred tokens a step is bound by Python and kernel launches, not by the GPU.
        self.cuda_graphs = cuda_graphs_enabled()
        # Graphs read the K/V cache by reference: keyed by its buffers, dropped when it is freed.
        self._graphs = CudaGraphs(lambda x, t, e, p, idx, n_ref, *rows: self._masked_body(
                                      _inputs(x, t, e, p), idx, n_ref.shape[0], rows[0] if rows else None),
                                  key_extra=lambda: tuple(q.key.data_ptr() if q.key is not None else 0
                                                          for q in self._processors))

    # -- installing and removing (KVCacheRunner) ----------------------------------------------------

    def _kv_processor(self, name: str, original: object) -> KVCacheAttnProcessor:
        return KVCacheAttnProcessor(self._state)  # one per Attention module, dual attention too

    # -- the cache ---------------------------------------------------------------------------------

    def free_cache(self) -> None:
        """Drop the recorded K/V (the memory goes back to the allocator), and the graphs that read it."""
        self._graphs.clear()
        self._recorded = None
        super().free_cache()

    # cache_nbytes (KVCacheRunner): ``2 * B * D * (layers * (N + T) + dual_layers * N)`` elements.

    # -- shapes ------------------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    def num_tokens(self, height: int, width: int) -> int:
        """Image tokens ``N`` of a latent ``height x width``."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {p}")
        return (height // p) * (width // p)

    # -- forwards ----------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, inputs: ModelInputs, *, record: bool, rows: torch.Tensor | None = None,
                cache_rows: int | None = None) -> torch.Tensor:
        """The stock forward on all tokens: ``(B, C, H, W)``. With ``record`` every layer stores its K/V.

        ``rows`` (int64, distinct): the cache rows the ``B`` batch rows of ``inputs`` are, in a cache of
        ``cache_rows`` rows (a per-sample cache for a batch whose samples are in different stages; with
        CFG the cache counts both halves as rows). ``None``: the cache is exactly this call's batch.
        """
        self._require_begun()
        if record:
            release_locked(self._processors, clone=False)
        if record and rows is not None:
            if cache_rows is None:
                raise ValueError("forward(record=True, rows=...) needs cache_rows: the cache's row count")
            self._check_rows(rows, inputs.hidden_states.shape[0], cache_rows)
            with self._mode(Mode.RECORD, rows=rows, cache_rows=cache_rows):
                out = plain_forward(self.model, inputs)
            if self._recorded is None or self._recorded.shape[0] != cache_rows:
                self._recorded = torch.zeros(cache_rows, dtype=torch.bool)
            self._recorded[rows.cpu()] = True
            return out
        if record:
            self._recorded = torch.ones(inputs.hidden_states.shape[0], dtype=torch.bool)
        with self._mode(Mode.RECORD if record else Mode.PLAIN):
            return plain_forward(self.model, inputs)

    @torch.no_grad()
    def forward_masked(self, inputs: ModelInputs, indices: torch.Tensor, *,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction for image tokens ``indices`` (``(B, m)``, distinct per row): ``(B, m, p*p*C)``.

        The other tokens are seen through the recorded K/V, which this call refreshes at ``indices``
        (Algorithm 1, line 10). Token ``j`` of row ``b`` is ``patchify(full_prediction)[b, indices[b, j]]``.
        ``rows``: the cache rows the batch rows are (see :meth:`forward`); ``None``: all, in order.
        """
        self._require_begun()
        if not self.has_cache:
            raise RuntimeError("forward_masked needs recorded K/V: call forward(inputs, record=True) first")
        x = inputs.hidden_states
        n = self.num_tokens(*x.shape[-2:])
        check_indices(indices, x.shape[0], n)
        extra = ()
        if rows is not None:
            self._check_rows(rows, x.shape[0], self._processors[0].key.shape[0])
            if self._recorded is None or not bool(self._recorded[rows.cpu()].all()):
                raise RuntimeError("forward_masked(rows=...) needs recorded K/V in every one of those rows: "
                                   "record a full forward of them first")
            extra = (rows,)
        release_locked(self._processors, clone=True)
        if x.is_cuda and self.cuda_graphs and not has_offload_hooks(self.model):  # offloaded weights move
            # n rides along as the length of an empty tensor, so the graph key carries it too.
            return self._graphs(x, inputs.timestep, inputs.encoder_hidden_states, inputs.pooled_projections,
                                indices, x.new_empty((n, 0)), *extra)
        with offload_hooks(self.model):  # the body calls submodules: run the model's own offload hooks
            return self._masked_body(inputs, indices, n, rows)

    def _masked_body(self, inputs: ModelInputs, indices: torch.Tensor, n: int,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """The masked forward itself: no host synchronisation, so it can be captured in a CUDA graph."""
        model = self.model
        with self._mode(Mode.MASKED, indices=indices, num_tokens=n, rows=rows):
            # The masked tokens' cache rows for the joint (N + T) and image-only (N) caches, made here once
            # rather than by the first block's processors: under torch.compile the blocks then see one state
            # in every call (no recompilation for the first block).
            for length in (n + inputs.encoder_hidden_states.shape[1], n):
                self._state.flat_index(length)
            # The subset is taken right after pos_embed: the tokens already carry their positions.
            hidden = model.pos_embed(inputs.hidden_states)
            hidden = torch.gather(hidden, 1, indices[..., None].expand(-1, -1, hidden.shape[-1]))
            temb = model.time_text_embed(inputs.timestep, inputs.pooled_projections)
            context = model.context_embedder(inputs.encoder_hidden_states)
            for block in model.transformer_blocks:
                context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
            return model.proj_out(model.norm_out(hidden, temb))

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _check_rows(rows: torch.Tensor, batch: int, cache_rows: int) -> None:
        if rows.dtype != torch.int64 or rows.ndim != 1 or rows.shape[0] != batch:
            raise ValueError(f"rows must be int64 of shape (B={batch},), got {rows.dtype} {tuple(rows.shape)}")
        if bool(((rows < 0) | (rows >= cache_rows)).any()) or rows.unique().numel() != batch:
            raise ValueError(f"rows must be distinct cache rows in [0, {cache_rows})")

    @contextlib.contextmanager
    def _mode(self, mode: Mode, *, indices: torch.Tensor | None = None, num_tokens: int = 0,
              rows: torch.Tensor | None = None, cache_rows: int = 0) -> Iterator[None]:
        state = self._state
        state.mode, state.indices, state.num_tokens = mode, indices, num_tokens
        state.rows, state.cache_rows = rows, cache_rows
        try:
            yield
        finally:
            state.reset()
