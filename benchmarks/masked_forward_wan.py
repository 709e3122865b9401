"""The masked-forward benchmark for the Wan 2.1 family (``masked_forward.py --family wan`` runs it).

Random-weight Wan-shaped transformers, timed with stitchkit's WanMaskedTransformer:

* default (CPU, one thread, float32): a 4-layer 3x64 "large" (ffn 768) and a 2-layer 2x64 "small" at
  latents 4 x 64 x 64 (N = 4 x 32 x 32 = 4,096 video tokens, patch 1x2x2), T = 512 text tokens (Wan's);
* ``--paper-scale`` (CUDA, bf16): Wan 2.1 T2V 14B as the large and 1.3B as the small model, from their
  public configs, at 480p x 81 frames (N = 32,760), T = 512.

Batch 2 (the CFG pair). Prints full large (diffusers' forward; stitchkit's with K/V recording), full small,
and masked large at 10/20/30/40% of the tokens (a random subset per sample), in ms and as ratios to the
stock full forward (the median over runs of the in-run ratio: rows go round-robin, so a shared machine's
drifting load cancels), beside the FLOP model (``stitchkit.families.wan.flops``: self-attention of the m
queries over all N keys, cross-attention to the text for the m queries, the text's K/V in full). Exits 1
when a masked ratio exceeds the FLOP model + 0.04. On CPU the clock is the thread's CPU time.
"""

from __future__ import annotations

import contextlib
import statistics

import torch

from masked_forward import RATIOS, SLACK, measure, random_indices, swapped_processors
from stitchkit.families.wan import wan_forward
from stitchkit.families.wan.flops import wan_transformer_flops
from stitchkit.families.wan.masked import WanMaskedTransformer
from stitchkit.families.wan.paper_configs import (LATENT_480P_81, TEXT_TOKENS, WAN21_1_3B, WAN21_14B,
                                                   random_transformer)
from stitchkit.tokens import patchify, token_grid
from stitchkit.protocols import ModelInputs

CPU_COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
CPU_LARGE = dict(CPU_COMMON, num_layers=4, num_attention_heads=3, attention_head_dim=64, ffn_dim=768)
CPU_SMALL = dict(CPU_COMMON, num_layers=2, num_attention_heads=2, attention_head_dim=64, ffn_dim=512)
CPU_LATENT = (4, 64, 64)


def bench(large, small, *, latent: tuple[int, int, int], text: int, batch: int, dtype, device, runs, warmup,
          title) -> bool:
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    inputs = ModelInputs(hidden_states=rand(batch, 16, *latent),
                         timestep=torch.full((batch,), 500, device=device),
                         encoder_hidden_states=rand(batch, text, 4096))
    stock_processors = large.attn_processors
    with WanMaskedTransformer(large) as masked:
        n = masked.num_tokens(*latent)
        masked.forward(inputs, record=True)
        cache_gb = masked.cache_nbytes / 1e9
        plain = contextlib.nullcontext
        rows = {
            "full large (stock)": (lambda: wan_forward(large, inputs),
                                   lambda: swapped_processors(large, stock_processors)),
            "full small (stock)": (lambda: wan_forward(small, inputs), plain),
            "full large (record K/V)": (lambda: masked.forward(inputs, record=True), plain),
        }
        full_flops = wan_transformer_flops(large, n, text)
        flops = {}
        for r in RATIOS:
            m = round(r * n)
            idx = random_indices(batch, n, m, g, device)
            name = f"masked large {r:.0%} (m={m})"
            rows[name] = (lambda idx=idx: masked.forward_masked(inputs, idx), plain)
            flops[name] = wan_transformer_flops(large, n, text, mask_ratio=m / n) / full_flops
        with torch.no_grad():
            times = measure(rows, device, runs, warmup)
            # Sanity: the masked forward over every token is the stock forward (up to the dtype's rounding).
            with swapped_processors(large, stock_processors):
                want = patchify(wan_forward(large, inputs), masked.patch_size)
            got = masked.forward_masked(inputs, torch.arange(n, device=device).expand(batch, n).contiguous())
        diff = (got.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item()

    full = times["full large (stock)"]
    ms = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = {name: statistics.median(t / f for t, f in zip(ts, full)) for name, ts in times.items()}
    small_flops = wan_transformer_flops(small, n, text) / full_flops
    grid = "x".join(map(str, token_grid(latent, masked.patch_size)))
    print(f"\n{title}: N={n} video tokens (grid {grid}), "
          f"T={text}, batch {batch}, {dtype}, {device.type}; K/V cache {cache_gb:.3f} GB")
    print(f"masked forward over all N tokens vs stock: max |diff| = {diff:.3g} (max |stock| = {scale:.3g})")
    print(f"{'run':<26}{'ms':>10}{'ratio':>8}{'FLOP model':>12}{'limit':>8}  ok")
    for name in ("full large (stock)", "full small (stock)", "full large (record K/V)"):
        flop = f"{small_flops:>12.3f}" if name.startswith("full small") else ""
        print(f"{name:<26}{ms[name]:>10.1f}{ratio[name]:>8.3f}{flop}")
    ok = True
    for name, flop in flops.items():
        good = ratio[name] <= flop + SLACK
        ok &= good
        print(f"{name:<26}{ms[name]:>10.1f}{ratio[name]:>8.3f}{flop:>12.3f}{flop + SLACK:>8.3f}  "
              f"{'yes' if good else 'NO'}")
    return ok


def run(args) -> bool:
    if args.paper_scale:
        device, dtype = torch.device("cuda"), torch.bfloat16
        large = random_transformer(WAN21_14B, dtype, device)
        small = random_transformer(WAN21_1_3B, dtype, device)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
        return bench(large, small, latent=LATENT_480P_81, text=TEXT_TOKENS, batch=args.batch, dtype=dtype,
                     device=device, runs=args.runs or 5, warmup=args.warmup,
                     title="Wan 2.1 T2V 14B / 1.3B, 480p x 81 frames")
    torch.set_num_threads(1)
    device, dtype = torch.device("cpu"), torch.float32
    torch.manual_seed(0)
    large, small = random_transformer(CPU_LARGE, dtype, device), random_transformer(CPU_SMALL, dtype, device)
    return bench(large, small, latent=CPU_LATENT, text=TEXT_TOKENS, batch=args.batch, dtype=dtype,
                 device=device, runs=args.runs or 3, warmup=args.warmup, title="Wan-shaped 4 layers 3x64 / 2 layers 2x64")
