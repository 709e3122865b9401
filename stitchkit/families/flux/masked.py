"""The large model's masked forward for diffusers' ``FluxTransformer2DModel`` (FLUX.1), with the previous
step's K/V.

HybridStitch §3.3, Algorithm 1, line 10, on FLUX's two block kinds. A double-stream
``FluxTransformerBlock`` is SD3's joint block with the sequence laid out [text, image] and rotary positions
on Q and K; a single-stream ``FluxSingleTransformerBlock`` concatenates text and image tokens into one
sequence [text, image] and runs attention and an MLP side by side on it. Outside attention everything is
per token (AdaLN-Zero modulation, norms, gates, residuals, MLPs, ``x_embedder``, ``norm_out``,
``proj_out``), so the masked forward is the unchanged diffusers blocks run on all ``T`` text tokens plus
the ``m`` selected image tokens, with one change inside attention (the SD3 runner's semantics,
:mod:`stitchkit.families.sd3.masked`):

* the subset is gathered from the packed latents before ``x_embedder`` (FLUX's positions live in the
  rotary embedding, not in the token), and the rotary table is gathered at the same tokens: each batch row
  gets ``[text rows, image rows T + indices]`` of ``pos_embed(cat(txt_ids, img_ids))``;
* **record** (a full forward, line 6): each attention module stores its K/V after qk-norm and rotary, so
  cached keys keep their positions;
* **masked** (line 10): each module writes the fresh K/V of its ``m`` image tokens into the stored
  full-length K/V (the cache is refreshed after every step, as §3.3 asks) and attends its ``T + m``
  queries to all ``T + N`` keys. The text rows are recomputed in every call (later blocks need the text
  stream), so they are scratch rows, written afresh.

Attention goes through diffusers' dispatch (:mod:`stitchkit.models.attention`) with the backend of the
``FluxAttnProcessor`` each K/V processor replaces, so ``set_attention_backend`` applies to hybrid steps.

Cache: one K and one V per attention module (``layers + single_layers`` of them), ``(R, T + N, heads,
head_dim)`` laid out [text, image] (``R`` model-batch rows, CFG halves counted): ``2 · (19 + 38) · R ·
(T + N) · D`` elements for FLUX.1-dev (D = 3072); at 1024² (N = 4096, T = 512), R = 1, bf16: 3.2 GB.

No CUDA-graph replay (SD3's runner has it): at FLUX's sizes (thousands of tokens, 12 B parameters) a
step is bound by the GPU, not by kernel launches.

Example::

    with FluxMaskedTransformer(transformer) as large:
        full = large.forward(inputs, record=True)          # (B, C, H, W), K/V recorded
        tokens = large.forward_masked(inputs, indices)     # (B, m, 2*2*C), cache refreshed at indices
    # transformer is exactly the stock model again, and the cache is freed
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from stitchkit.families.flux.latents import PACK, flux_call_args, to_stitch_layout, unpack
from stitchkit.models.attention import DispatchedAttention, attend
from stitchkit.models.cuda_graphs import release_locked
from stitchkit.models.indices import check_indices, check_rows, flat_rows
from stitchkit.models.kv_cache import record_kv
from stitchkit.models.kv_runner import KVCacheRunner
from stitchkit.models.offload import offload_hooks

if TYPE_CHECKING:
    from stitchkit.protocols import ModelInputs


class Mode(enum.Enum):
    PLAIN = "plain"  # the stock attention, nothing stored
    RECORD = "record"  # the stock attention, K/V stored
    MASKED = "masked"  # T + m queries against the stored K/V, refreshed at the m image tokens


class PassState:
    """Per-call state shared by the processors of one model (``FluxAttention.forward`` drops extras)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mode = Mode.PLAIN
        self.indices: torch.Tensor | None = None  # (B, m), masked mode
        self.num_tokens = 0  # N image tokens, masked mode
        self.rows: torch.Tensor | None = None  # (B,), the cache rows of the batch rows, or None: 0..B-1
        self.cache_rows: int | None = None  # R when recording a row subset
        self._flat: dict[int, torch.Tensor] = {}

    def flat_image_rows(self, text: int) -> torch.Tensor:
        """The selected image tokens' rows in a ``(R * (text + N), ...)`` view of a [text, image] cache."""
        flat = self._flat.get(text)
        if flat is None:
            flat = self._flat[text] = flat_rows(self.indices + text, text + self.num_tokens, self.rows)
        return flat


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """FLUX's rotary embedding on ``x`` ``(B, S, heads, head_dim)``. A shared ``(S, head_dim)`` table (the stock
    forward) goes to diffusers' ``apply_rotary_emb`` itself; a per-row ``(B, S, head_dim)`` table (gathered
    tokens) takes the same arithmetic (``diffusers/models/embeddings.py:986-997``) broadcast over heads."""
    cos, sin = rotary
    if cos.ndim == 2:
        return apply_rotary_emb(x, rotary, sequence_dim=1)
    cos, sin = cos[:, :, None, :].to(x.device), sin[:, :, None, :].to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class FluxKVCacheAttnProcessor(DispatchedAttention):
    """Attention for one ``FluxAttention`` module (a double-stream block's joint ``attn`` or a single-stream
    block's ``attn``), owning that module's K/V cache.

    In :attr:`Mode.PLAIN` it computes what ``FluxAttnProcessor`` computes
    (``diffusers/models/transformers/transformer_flux.py:76-142``), projections through diffusers' own
    ``_get_qkv_projections`` (fused or not).
    """

    def __init__(self, state: PassState) -> None:
        self.state = state
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("FluxKVCacheAttnProcessor takes no attention mask (FLUX uses none)")
        query, key, value, text_query, text_key, text_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # (B, n, heads, head_dim): the cache's
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        joint = attn.added_kv_proj_dim is not None
        if joint:  # double-stream: the text stream's own projections, in front of the image tokens
            text_query = attn.norm_added_q(text_query.unflatten(-1, (-1, attn.head_dim)))
            text_key = attn.norm_added_k(text_key.unflatten(-1, (-1, attn.head_dim)))
            query = torch.cat([text_query, query], dim=1)
            key = torch.cat([text_key, key], dim=1)
            value = torch.cat([text_value.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary(query, image_rotary_emb)
            key = apply_rotary(key, image_rotary_emb)

        mode = self.state.mode
        if mode is Mode.RECORD:
            self._record(key, value)
        elif mode is Mode.MASKED:
            key, value = self._refresh(key, value)

        out = attend(self, query, key, value).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1],
                                            out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())

    def _record(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store this call's K/V (Algorithm 1, line 6), in cache rows ``state.rows`` when given."""
        record_kv(self, key, value, self.state.rows, self.state.cache_rows)

    def _refresh(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the m fresh image K/V rows into the cache and return this call's rows of it, text rows
        written afresh (Algorithm 1, line 10). ``key``/``value``: ``(B, T + m, heads, head_dim)``."""
        state = self.state
        batch, length, heads, head_dim = key.shape
        text = length - state.indices.shape[1]
        if (self.key is None or self.key.shape[1:] != (text + state.num_tokens, heads, head_dim)
                or self.key.dtype != key.dtype):
            have = "none" if self.key is None else f"{tuple(self.key.shape)} {self.key.dtype}"
            raise RuntimeError(f"the recorded K/V ({have}) does not fit this masked call ((R, "
                               f"{text + state.num_tokens}, {heads}, {head_dim}) {key.dtype}); record a full "
                               "forward with the same latent size and prompt length first")
        flat = state.flat_image_rows(text)
        self.key.view(-1, heads, head_dim).index_copy_(0, flat, key[:, text:].reshape(-1, heads, head_dim))
        self.value.view(-1, heads, head_dim).index_copy_(0, flat, value[:, text:].reshape(-1, heads, head_dim))
        if state.rows is None:
            cached_key, cached_value = self.key, self.value
        else:
            cached_key, cached_value = self.key.index_select(0, state.rows), self.value.index_select(0, state.rows)
        cached_key[:, :text].copy_(key[:, :text])
        cached_value[:, :text].copy_(value[:, :text])
        return cached_key, cached_value


def flux_forward(model: FluxTransformer2DModel, inputs: "ModelInputs") -> torch.Tensor:
    """The stock transformer on ``inputs`` as ``FluxPipeline`` calls it: the prediction ``(B, C, H, W)``."""
    out = model(**flux_call_args(model, inputs), return_dict=False)[0]
    return unpack(out, *inputs.hidden_states.shape[-2:])


class FluxMaskedTransformer(KVCacheRunner):
    """One ``FluxTransformer2DModel`` (FLUX.1-dev / -schnell, Flux.1 Lite) with a masked forward.

    :meth:`begin` installs one :class:`FluxKVCacheAttnProcessor` per attention module (double- and
    single-stream alike), each inheriting the replaced processor's attention backend, and remembers the
    model's processors; :meth:`end` puts those very objects back and frees the cache. No diffusers class is
    patched: outside ``begin``/``end`` the model is the stock one.
    """

    #: Latent pixels per token side: FLUX packs 2×2 latent patches.
    patch_size = PACK

    def __init__(self, model: FluxTransformer2DModel) -> None:
        if not isinstance(model, FluxTransformer2DModel):
            raise TypeError(f"FluxMaskedTransformer wraps a FluxTransformer2DModel, got {type(model).__name__}")
        if int(model.config.patch_size) != 1:
            raise TypeError("FluxMaskedTransformer supports FLUX's packed layout (patch_size=1 on 2×2 tokens)")
        super().__init__()
        self.model = model
        self._state = PassState()

    # -- installing and removing ------------------------------------------------------------------

    def _kv_processor(self, name: str, original: object) -> FluxKVCacheAttnProcessor:
        return FluxKVCacheAttnProcessor(self._state)  # double- and single-stream blocks alike

    # cache_nbytes (KVCacheRunner): ``2 · (layers + single_layers) · R · (T + N) · D`` elements.

    # -- shapes ------------------------------------------------------------------------------------

    def num_tokens(self, height: int, width: int) -> int:
        """Image tokens ``N`` of latents ``height x width``."""
        if height % PACK or width % PACK:
            raise ValueError(f"latent size {height}x{width} is not divisible by FLUX's 2x2 packing")
        return (height // PACK) * (width // PACK)

    # -- forwards ----------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, inputs: ModelInputs, *, record: bool, rows: torch.Tensor | None = None,
                cache_rows: int | None = None) -> torch.Tensor:
        """The stock forward on all tokens: ``(B, C, H, W)``. With ``record`` every attention module stores its
        K/V; with ``rows`` (and ``cache_rows``) into those rows of a cache of ``cache_rows`` rows."""
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
            return flux_forward(self.model, inputs)
        finally:
            state.reset()

    @torch.no_grad()
    def forward_masked(self, inputs: ModelInputs, indices: torch.Tensor, *,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction for image tokens ``indices`` (``(B, m)``, distinct per row): ``(B, m, 2*2*C)``, token
        ``j`` of row ``b`` being ``patchify(full_prediction, 2)[b, indices[b, j]]``.

        The other tokens are seen through the recorded K/V, which this call refreshes at ``indices``
        (Algorithm 1, line 10); with ``rows``, batch row ``j`` reads and writes cache row ``rows[j]``.
        """
        self._require_begun()
        if not self.has_cache:
            raise RuntimeError("forward_masked needs recorded K/V: call forward(inputs, record=True) first")
        x = inputs.hidden_states
        batch = x.shape[0]
        n = self.num_tokens(*x.shape[-2:])
        check_indices(indices, batch, n)
        cached = self._processors[0].key
        if rows is None and cached.shape[0] != batch:
            raise RuntimeError(f"the recorded K/V has {cached.shape[0]} rows, this call {batch}: pass rows")
        if rows is not None:
            check_rows(rows, batch, cached.shape[0])
        release_locked(self._processors, clone=True)
        state = self._state
        try:
            state.mode, state.indices, state.num_tokens, state.rows = Mode.MASKED, indices, n, rows
            with offload_hooks(self.model):  # the body calls submodules: run the model's offload hooks
                return self._masked_body(inputs, indices)
        finally:
            state.reset()

    def _masked_body(self, inputs: ModelInputs, indices: torch.Tensor) -> torch.Tensor:
        """The blocks on the text and the gathered image tokens; mirrors ``FluxTransformer2DModel.forward``
        (``transformer_flux.py:723-821``) step by step, without ControlNet and IP-Adapter inputs."""
        model = self.model
        args = flux_call_args(model, inputs)
        hidden = args["hidden_states"]  # packed (B, N, C·4): gathered before x_embedder, which is per token
        hidden = model.x_embedder(torch.gather(hidden, 1, indices[..., None].expand(-1, -1, hidden.shape[-1])))
        timestep = args["timestep"].to(hidden.dtype) * 1000
        guidance = args["guidance"]
        if guidance is None:
            temb = model.time_text_embed(timestep, args["pooled_projections"])
        else:
            temb = model.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, args["pooled_projections"])
        context = model.context_embedder(args["encoder_hidden_states"])
        cos, sin = model.pos_embed(torch.cat((args["txt_ids"], args["img_ids"]), dim=0))  # (T + N, head_dim)
        text = context.shape[1]
        # The cache rows of the selected tokens, made here once rather than by the first block's processor:
        # under torch.compile the blocks then see one state in every call (no recompilation for the first).
        self._state.flat_image_rows(text)
        # Each row's own positions: every text row, then its selected image rows.
        rows = torch.cat([torch.arange(text, device=indices.device).expand(indices.shape[0], text),
                          indices + text], dim=1)
        rotary = (cos[rows], sin[rows])  # (B, T + m, head_dim)
        for block in model.transformer_blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                    image_rotary_emb=rotary)
        for block in model.single_transformer_blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                    image_rotary_emb=rotary)
        return to_stitch_layout(model.proj_out(model.norm_out(hidden, temb)))

