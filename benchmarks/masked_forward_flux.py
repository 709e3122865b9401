"""The masked-forward benchmark for the FLUX.1 family (``masked_forward.py --family flux`` runs it).

Random-weight FLUX-shaped transformers, timed with stitchkit's FluxMaskedTransformer:

* default (CPU, one thread, float32): a "large" with 2 double- and 4 single-stream blocks of 4x64 and a
  "small" with 1 + 2 blocks of 2x64, at 64x64 latents (N = 32 x 32 = 1,024 packed image tokens) with
  T = 512 T5 tokens (FluxPipeline's max_sequence_length);
* ``--paper-scale`` (CUDA, bf16): FLUX.1-dev as the large and Flux.1 Lite 8B as the small model, from
  their public configs, at 1024² (N = 4,096), T = 512.

Batch 2 by default (``--batch``; FLUX.1-dev itself runs one pass per image, distilled guidance). Prints
full large (diffusers' forward; stitchkit's with K/V recording), full small, and masked large at
10/20/30/40% of the image tokens (a random subset per sample), in ms and as ratios to the stock full
forward (the median over runs of the in-run ratio: rows go round-robin, so a shared machine's drifting
load cancels), beside the FLOP model (``stitchkit.families.flux.flops``: every text token and the m image
tokens computed in every block, each attending to all N + T keys). Exits 1 when a masked ratio exceeds
the FLOP model + 0.04. On CPU the clock is the thread's CPU time.
"""

from __future__ import annotations

import contextlib
import statistics

import torch

from masked_forward import RATIOS, SLACK, measure, random_indices, swapped_processors
from stitchkit.families.flux.flops import flux_transformer_flops
from stitchkit.families.flux.masked import FluxMaskedTransformer, flux_forward
from stitchkit.families.flux.paper_random import COMMON, FLUX1_DEV, FLUX1_LITE_8B, random_transformer
from stitchkit.tokens import patchify, token_grid
from stitchkit.protocols import ModelInputs

CPU_LARGE = dict(COMMON, num_layers=2, num_single_layers=4, num_attention_heads=4, attention_head_dim=64,
                 axes_dims_rope=(16, 24, 24))
CPU_SMALL = dict(CPU_LARGE, num_layers=1, num_single_layers=2, num_attention_heads=2)
TEXT_TOKENS = 512


def bench(large, small, *, latent: int, text: int, batch: int, dtype, device, runs, warmup, title) -> bool:
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    c = large.config
    inputs = ModelInputs(hidden_states=rand(batch, 16, latent, latent),
                         timestep=torch.full((batch,), 500.0, device=device),
                         encoder_hidden_states=rand(batch, text, c.joint_attention_dim),
                         pooled_projections=rand(batch, c.pooled_projection_dim),
                         guidance=torch.full((batch,), 3.5, device=device))
    stock_processors = large.attn_processors
    with FluxMaskedTransformer(large) as masked:
        n = masked.num_tokens(latent, latent)
        masked.forward(inputs, record=True)
        cache_gb = masked.cache_nbytes / 1e9
        plain = contextlib.nullcontext
        rows = {
            "full large (stock)": (lambda: flux_forward(large, inputs),
                                   lambda: swapped_processors(large, stock_processors)),
            "full small (stock)": (lambda: flux_forward(small, inputs), plain),
            "full large (record K/V)": (lambda: masked.forward(inputs, record=True), plain),
        }
        full_flops = flux_transformer_flops(large, n, text)
        flops = {}
        for r in RATIOS:
            m = round(r * n)
            idx = random_indices(batch, n, m, g, device)
            name = f"masked large {r:.0%} (m={m})"
            rows[name] = (lambda idx=idx: masked.forward_masked(inputs, idx), plain)
            flops[name] = flux_transformer_flops(large, n, text, mask_ratio=m / n) / full_flops
        with torch.no_grad():
            times = measure(rows, device, runs, warmup)
            # Sanity: the masked forward over every token is the stock forward (up to the dtype's rounding).
            with swapped_processors(large, stock_processors):
                want = patchify(flux_forward(large, inputs), masked.patch_size)
            got = masked.forward_masked(inputs, torch.arange(n, device=device).expand(batch, n).contiguous())
        diff = (got.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item()

    full = times["full large (stock)"]
    ms = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = {name: statistics.median(t / f for t, f in zip(ts, full)) for name, ts in times.items()}
    small_flops = flux_transformer_flops(small, n, text) / full_flops
    grid = "x".join(map(str, token_grid((latent, latent), masked.patch_size)))
    print(f"\n{title}: N={n} image tokens (grid {grid}), "
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
        large = random_transformer(FLUX1_DEV, dtype, device)
        small = random_transformer(FLUX1_LITE_8B, dtype, device)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
        return bench(large, small, latent=128, text=TEXT_TOKENS, batch=args.batch, dtype=dtype, device=device,
                     runs=args.runs or 5, warmup=args.warmup, title="FLUX.1-dev / Flux.1 Lite 8B, 1024²")
    torch.set_num_threads(1)
    device, dtype = torch.device("cpu"), torch.float32
    torch.manual_seed(0)
    large, small = random_transformer(CPU_LARGE, dtype, device), random_transformer(CPU_SMALL, dtype, device)
    return bench(large, small, latent=64, text=TEXT_TOKENS, batch=args.batch, dtype=dtype, device=device,
                 runs=args.runs or 3, warmup=args.warmup, title="FLUX-shaped 2+4 blocks 4x64 / 1+2 blocks 2x64")
