"""The FLOP model of one ``WanTransformer3DModel`` forward, full or masked, for the latency checks (Eq. 6-8)
and the masked-forward benchmark.

Per block, for ``q = M·N`` recomputed video tokens of width ``D`` (the rest seen through the K/V cache):
self-attention Q/K/V projections ``6·D²`` and output ``2·D²`` per query token, attention ``4·q·N·D``
(QKᵀ and AV over all ``N`` keys); cross-attention Q ``2·D²`` and output ``2·D²`` per query, its K/V on all
``T`` text tokens ``4·D²·T`` (computed every call, masked or not), attention ``4·q·T·D``; the feed-forward
``4·D·ffn_dim`` per query. Outside the blocks: the patch embedding on all ``N`` tokens (it runs before the
subset is taken), the text embedder (``text_dim → D → D``) on ``T`` tokens, the output projection on
``q`` tokens. Per-sample terms (timestep embedding and modulation) and norms are left out. 2 FLOPs per
multiply-add.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def wan_transformer_flops(config: Any, num_tokens: int, num_text_tokens: int, *, mask_ratio: float = 1.0) -> float:
    """FLOPs of one forward for one sample at ``num_tokens`` video tokens, recomputing ``mask_ratio`` of them."""
    c = getattr(config, "config", config)
    if not isinstance(c, Mapping):
        raise TypeError(f"expected a WanTransformer3DModel or its config, got {type(config).__name__}")
    d = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    layers, ffn = int(c["num_layers"]), int(c["ffn_dim"])
    patch = math.prod(int(v) for v in c.get("patch_size", (1, 2, 2)))
    c_in = int(c.get("in_channels", 16))
    c_out = int(c.get("out_channels") or c_in)
    text_dim = int(c.get("text_dim", 4096))
    n, t = float(num_tokens), float(num_text_tokens)
    q = mask_ratio * n

    per_block = (8 * d * d + 4 * d * d) * q  # self-attn QKV + out, cross-attn Q + out
    per_block += 4.0 * q * n * d  # self-attention over all N keys
    per_block += 4.0 * d * d * t + 4.0 * q * t * d  # cross-attention: text K/V, attention over T keys
    per_block += 4.0 * d * ffn * q  # feed-forward
    total = layers * per_block
    total += 2.0 * patch * c_in * d * n  # patch embedding (all N tokens)
    total += 2.0 * t * (text_dim * d + d * d)  # text embedder
    total += 2.0 * d * patch * c_out * q  # proj_out on the computed tokens
    return total
