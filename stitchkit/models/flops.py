"""The FLOP model of a joint-attention diffusion transformer (``SD3Transformer2DModel`` and the shipped
shapes pair): the paper's cost of a masked step counted operation by operation, the default ``Family.flops``
and what the latency checks fall back to without a measured profile (Eq. 6-8).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["transformer_config", "transformer_flops"]


def transformer_config(model_or_config: Any) -> Mapping[str, Any]:
    """A transformer's config as a mapping (a model's ``.config``, or the mapping itself)."""
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, Mapping):
        kind = type(model_or_config).__name__
        raise TypeError(f"expected a transformer or its config, got {kind}")
    return config


def transformer_flops(config: Any, num_image_tokens: int, num_text_tokens: int, *,
                      mask_ratio: float = 1.0) -> float:
    """Floating-point operations of one ``SD3Transformer2DModel`` forward for one sample (2 per multiply-add).

    Per joint block, for ``q = M·N + T`` query tokens (the image tokens that are recomputed, and all text
    tokens) attending to ``N + T`` keys (the rest from the K/V cache): Q/K/V projections ``6·D²`` and the
    output projection ``2·D²`` per query token, attention ``4·q·(N + T)·D``, the feed-forward (``4·D`` wide)
    ``16·D²`` per query token. The last block (``context_pre_only``) computes only the text K/V (``4·D²``):
    its text output is discarded, so :class:`~stitchkit.families.sd3.masked.MaskedTransformer` computes no
    text queries there (stock diffusers does, a rounding error). SD3.5's dual-attention blocks add
    image-only self-attention (``8·D²`` per image query token, ``4·M·N·N·D``). Outside the blocks: the
    patch embedding on all ``N`` tokens (it runs before a subset is taken), the context embedder on the
    text tokens, the output projection on the ``M·N`` tokens. Per-sample terms (AdaLN modulation, time and pooled
    embeddings) and norms are left out: they are a rounding error.
    """
    c = transformer_config(config)
    d = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    layers = int(c["num_layers"])
    p = int(c.get("patch_size", 2))
    c_in = int(c.get("in_channels", 16))
    c_out = int(c.get("out_channels") or c_in)
    joint = int(c.get("joint_attention_dim", 4096))
    dual = {int(i) for i in (c.get("dual_attention_layers") or ())}
    n, t = float(num_image_tokens), float(num_text_tokens)
    m = mask_ratio * n
    keys = n + t

    total = 2.0 * p * p * c_in * d * n  # patch embedding (all N tokens)
    total += 2.0 * joint * d * t  # context embedder
    total += 2.0 * d * p * p * c_out * m  # proj_out on the computed tokens
    for layer in range(layers):
        last = layer == layers - 1
        total += (6 + 2 + 16) * d * d * m  # image: QKV, out projection, feed-forward
        total += (4 if last else 6 + 2 + 16) * d * d * t  # text (the last block: K/V only)
        total += 4.0 * (m + (0 if last else t)) * keys * d  # joint attention: QK^T and AV
        if layer in dual:
            total += 8.0 * d * d * m + 4.0 * m * n * d  # attn2: image-only self-attention
    return total
