"""How much a masked large-model step costs against a full one (HybridStitch §3.3, Algorithm 1 line 10).

Random-weight SD3-shaped transformers, timed with stitchkit's MaskedTransformer:

* default (CPU, one thread): a 12-layer 6x64 "large" and a 6-layer 4x64 "small" at 64x64 latents
  (N = 1024 image tokens, patch 2, 16 channels) with T = 77 text tokens, float32;
* ``--paper-scale`` (CUDA): SD3.5 Large as the large and SD3 Medium as the small model, from their public
  configs, bf16, 768² and 1024² images (N = 2304, 4096), T = 333.

Batch 2 by default in both: the CFG pair, which is how the large model runs in every step of a guided
generation. ``--batch 1`` (unguided) sits 0.01-0.02 above the limit on CPU: what the FLOP model leaves
out weighs twice as much there (the per-sample AdaLN weight reads and per-layer Python, about 3% of a
full step, and the lower efficiency of GEMMs on ~100-row inputs, image and text alike).

Prints full large (diffusers' own forward; and stitchkit's with K/V recording), full small, and masked
large at 10/20/30/40% of the tokens (a random subset per sample), in ms (median of several runs after
warm-up) and as ratios to the stock full forward (the median over runs of the ratio within a run: rows go
round-robin, so a shared machine's drifting load cancels), beside the FLOP model ``(m + T) / (N + T)``
(every query, image or text, attends to all N + T keys in both forwards, so attention scales like the
linear layers). Exits 1 when a masked ratio exceeds the FLOP model + 0.04. On CPU the clock is the
thread's CPU time.

    OMP_NUM_THREADS=1 python benchmarks/masked_forward.py
    python benchmarks/masked_forward.py --paper-scale

``--family wan`` runs the same measurement on Wan 2.1-shaped video transformers (masked_forward_wan.py),
``--family flux`` on FLUX.1-shaped transformers (masked_forward_flux.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.utils import logging as diffusers_logging

from stitchkit.families.sd3.masked import MaskedTransformer
from stitchkit.families.sd3.paper_random import SD3_MEDIUM, SD35_LARGE, random_transformer
from stitchkit.tokens import patchify
from stitchkit.protocols import ModelInputs

RATIOS = (0.1, 0.2, 0.3, 0.4)
SLACK = 0.04

COMMON = dict(patch_size=2, in_channels=16, out_channels=16, joint_attention_dim=4096, pooled_projection_dim=2048)
CPU_LARGE = dict(COMMON, sample_size=64, pos_embed_max_size=64, num_layers=12, num_attention_heads=6,
                 attention_head_dim=64, caption_projection_dim=384)
CPU_SMALL = dict(CPU_LARGE, num_layers=6, num_attention_heads=4, caption_projection_dim=256)


def build(config: dict, dtype: torch.dtype, device: torch.device) -> SD3Transformer2DModel:
    """A random-weight transformer made directly on ``device`` in ``dtype`` (no slow CPU init)."""
    return random_transformer(config, dtype, device)


def measure(rows: dict, device: torch.device, runs: int, warmup: int) -> dict:
    """ms of each row in each run. A row is ``(fn, setup)``: ``setup()``, a context manager, is entered
    outside the timed region. Runs go round-robin over the rows, so that a load that drifts (a shared
    machine) hits every row alike; on CPU the clock is the thread's CPU time (one thread)."""
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict = {name: [] for name in rows}
    for i in range(warmup + runs):
        for name, (fn, setup) in rows.items():
            with setup():
                sync()
                start = clock()
                fn()
                sync()
                elapsed = (clock() - start) * 1e3
            if i >= warmup:
                times[name].append(elapsed)
    return times


def random_indices(batch: int, n: int, m: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A different random token subset per sample, sorted, as a mask policy returns it."""
    rows = [torch.randperm(n, generator=generator)[:m].sort().values for _ in range(batch)]
    return torch.stack(rows).to(device)


@contextlib.contextmanager
def swapped_processors(model, processors: dict):
    """``model`` with ``processors`` installed for a while (the stock ones, to time the stock forward)."""
    current = model.attn_processors
    model.set_attn_processor(dict(processors))
    try:
        yield
    finally:
        model.set_attn_processor(current)


@contextlib.contextmanager
def eager(masked):
    """``masked`` without CUDA-graph replay for a while."""
    masked.cuda_graphs = False
    try:
        yield
    finally:
        masked.cuda_graphs = True


def bench(large, small, *, latent: int, text: int, batch: int, dtype, device, runs, warmup, title) -> bool:
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    inputs = ModelInputs(
        hidden_states=rand(batch, 16, latent, latent),
        timestep=torch.full((batch,), 500.0, device=device),
        encoder_hidden_states=rand(batch, text, 4096),
        pooled_projections=rand(batch, 2048),
    )

    @torch.no_grad()
    def stock(model):
        return model(hidden_states=inputs.hidden_states, encoder_hidden_states=inputs.encoder_hidden_states,
                     pooled_projections=inputs.pooled_projections, timestep=inputs.timestep, return_dict=False)[0]

    stock_processors = large.attn_processors
    with MaskedTransformer(large) as masked:
        n = masked.num_tokens(latent, latent)
        masked.forward(inputs, record=True)
        cache_gb = masked.cache_nbytes / 1e9
        plain = contextlib.nullcontext
        rows = {
            "full large (stock)": (lambda: stock(large), lambda: swapped_processors(large, stock_processors)),
            "full small (stock)": (lambda: stock(small), plain),
            "full large (record K/V)": (lambda: masked.forward(inputs, record=True), plain),
        }
        flops = {}
        for r in RATIOS:
            m = round(r * n)
            idx = random_indices(batch, n, m, g, device)
            name = f"masked large {r:.0%} (m={m})"
            rows[name] = (lambda idx=idx: masked.forward_masked(inputs, idx), plain)
            flops[name] = (m + text) / (n + text)
            if device.type == "cuda":  # the same call without CUDA-graph replay, for comparison
                rows[f"  eager {r:.0%}"] = (lambda idx=idx: masked.forward_masked(inputs, idx),
                                            lambda: eager(masked))
        times = measure(rows, device, runs, warmup)
        if device.type == "cuda":  # graph replay must compute what the eager masked forward computes
            idx = random_indices(batch, n, round(0.3 * n), g, device)
            graphed = masked.forward_masked(inputs, idx)
            with eager(masked):
                plain_out = masked.forward_masked(inputs, idx)
            print(f"CUDA graph vs eager masked forward: max |diff| = {(graphed - plain_out).abs().max().item():.3g}")
        # Sanity: the masked forward over every token is the stock forward (up to the dtype's rounding).
        with swapped_processors(large, stock_processors):
            want = patchify(stock(large), masked.patch_size)
        got = masked.forward_masked(inputs, torch.arange(n, device=device).expand(batch, n))
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()

    full = times["full large (stock)"]
    ms = {name: statistics.median(ts) for name, ts in times.items()}
    # A row's ratio: the median over runs of its time / the stock full forward's time in the same run.
    ratio = {name: statistics.median(t / f for t, f in zip(ts, full)) for name, ts in times.items()}

    print(f"\n{title}: N={n}, T={text}, batch {batch}, {dtype}, {device.type}; K/V cache {cache_gb:.3f} GB")
    print(f"masked forward over all N tokens vs stock: max |diff| = {diff:.3g} (max |stock| = {scale:.3g})")
    print(f"{'run':<26}{'ms':>10}{'ratio':>8}{'FLOP model':>12}{'limit':>8}  ok")
    for name in ("full large (stock)", "full small (stock)", "full large (record K/V)"):
        print(f"{name:<26}{ms[name]:>10.1f}{ratio[name]:>8.3f}")
    for name in (k for k in ms if k.startswith("  eager")):
        print(f"{name:<26}{ms[name]:>10.1f}{ratio[name]:>8.3f}")
    ok = True
    for name, flop in flops.items():
        good = ratio[name] <= flop + SLACK
        ok &= good
        print(f"{name:<26}{ms[name]:>10.1f}{ratio[name]:>8.3f}{flop:>12.3f}{flop + SLACK:>8.3f}  "
              f"{'yes' if good else 'NO'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-scale", action="store_true", help="SD3.5 Large / SD3 Medium shapes, on CUDA")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="2: one image with guidance (CFG)")
    parser.add_argument("--family", choices=("sd3", "wan", "flux"), default="sd3",
                        help="wan: Wan 2.1-shaped video transformers (masked_forward_wan.py); "
                             "flux: FLUX.1-shaped transformers (masked_forward_flux.py)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    diffusers_logging.set_verbosity_error()  # not the "keep in float32" note from .to(dtype) on random models

    if args.family in ("wan", "flux"):
        import importlib

        ok = importlib.import_module(f"masked_forward_{args.family}").run(args)
        if not ok:
            print(f"\nFAIL: a masked ratio exceeds the FLOP model + {SLACK}", file=sys.stderr)
        return 0 if ok else 1

    if args.paper_scale:
        device, dtype = torch.device("cuda"), torch.bfloat16
        large, small = build(SD35_LARGE, dtype, device), build(SD3_MEDIUM, dtype, device)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
        ok = True
        for px in (768, 1024):
            ok &= bench(large, small, latent=px // 8, text=333, batch=args.batch, dtype=dtype, device=device,
                        runs=args.runs or 10, warmup=args.warmup, title=f"SD3.5 Large / SD3 Medium, {px}²")
    else:
        torch.set_num_threads(1)
        device, dtype = torch.device("cpu"), torch.float32
        large, small = build(CPU_LARGE, dtype, device), build(CPU_SMALL, dtype, device)
        ok = bench(large, small, latent=64, text=77, batch=args.batch, dtype=dtype, device=device,
                   runs=args.runs or 7, warmup=args.warmup, title="12 layers 6x64 / 6 layers 4x64, 64x64 latents")
    if not ok:
        print(f"\nFAIL: a masked ratio exceeds the FLOP model + {SLACK}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
