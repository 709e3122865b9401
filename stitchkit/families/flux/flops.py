"""The FLOP model of one ``FluxTransformer2DModel`` forward, full or masked, for the latency checks (Eq. 6-8)
and the masked-forward benchmark.

For ``q = M·N`` recomputed image tokens of width ``D`` and ``T`` text tokens, every query (the ``q``
image tokens and all ``T`` text tokens) attends to all ``N + T`` keys (the rest through the K/V cache):

* a double-stream block, per query token: Q/K/V ``6·D²``, output projection ``2·D²``, feed-forward
  (4·D wide) ``16·D²``, on the image stream and the text stream alike; attention ``4·(q + T)·(N + T)·D``;
* a single-stream block, per query token: Q/K/V ``6·D²``, ``proj_mlp`` (D -> 4·D) ``8·D²``,
  ``proj_out`` (5·D -> D) ``10·D²``; attention ``4·(q + T)·(N + T)·D``;
* outside the blocks: ``x_embedder`` on the ``q`` tokens (the subset is gathered before it),
  ``context_embedder`` on ``T``, ``proj_out`` on ``q``.

Per-sample terms (the timestep, guidance and pooled-text embeddings, AdaLN modulation) and norms are left
out. 2 FLOPs per multiply-add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flux_transformer_flops(config: Any, num_tokens: int, num_text_tokens: int, *, mask_ratio: float = 1.0) -> float:
    """FLOPs of one forward for one sample at ``num_tokens`` image tokens, recomputing ``mask_ratio`` of them."""
    c = getattr(config, "config", config)
    if not isinstance(c, Mapping):
        raise TypeError(f"expected a FluxTransformer2DModel or its config, got {type(config).__name__}")
    d = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    double, single = int(c["num_layers"]), int(c["num_single_layers"])
    c_in = int(c.get("in_channels", 64))
    c_out = int(c.get("out_channels") or c_in)
    joint = int(c.get("joint_attention_dim", 4096))
    n, t = float(num_tokens), float(num_text_tokens)
    q = mask_ratio * n
    attention = 4.0 * (q + t) * (n + t) * d

    total = double * (24.0 * d * d * (q + t) + attention)
    total += single * (24.0 * d * d * (q + t) + attention)
    total += 2.0 * c_in * d * q + 2.0 * joint * d * t + 2.0 * d * c_out * q  # x_embedder, context, proj_out
    return total
