"""``stitchkit profile``: measure a pair's ``L_l``, ``L_s`` and masked ``L_l(M)``, print them, cache them.

    stitchkit profile --pair tiny-random --height 64 --width 64
    stitchkit profile --pair wan-tiny-random --height 32 --width 48 --num-frames 9 --max-sequence-length 16

A profile is cached per pair, size (a video's frames too), dtype, device, batch and text length
(:class:`ProfileKey`); a second run prints the cached one unless ``--refresh``. What the key and the
inputs' shapes depend on (VAE factor, patch size, text length, a video's frames) is asked of the pair's
adapter, never assumed for a family (:func:`pair_shape`). Options are parsed here so that every refusal
is one :class:`ConfigError` line. The pair is loaded only when the key needs it (no ``--vae-scale-factor``
and ``--text-tokens``, or a ``--num-frames``) or something has to be measured.
"""

from __future__ import annotations

import json

import attrs
import click

from stitchkit.commands.plan import parse_floats, parse_int
from stitchkit.errors import ConfigError
from stitchkit.registry import get_registry
from stitchkit.cost.latency import Costs, validate_costs
from stitchkit.cost.profile import (
    DEFAULT_RATIOS,
    DTYPES,
    ProfileKey,
    cpu_threads,
    format_costs,
    load_profile,
    profile_path,
    profile_transformers,
    save_profile,
)

__all__ = ["command", "measure_pair", "profile"]


def _positive(option: str, text: str, *, minimum: int = 1) -> int:
    value = parse_int(option, text)
    if value < minimum:
        raise ConfigError(option, f"{value} is below {minimum}", f"must be at least {minimum}")
    return value


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError("--device", f"{text!r} is not a device", "e.g. cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", f"{text!r} is not available here", "CUDA is not available; use cpu")
    return str(device)


def measure_pair(key: ProfileKey, *, vae_scale_factor: int, ratios, warmup: int, repeats: int,
                 num_threads: int | None = None, attempts: int = 3,
                 latent_frames: int | None = None) -> tuple[Costs, list[str]]:
    """Load the pair's transformers (``stitchkit.pipeline.pairs.load_pair_transformers``) once and profile them at
    ``key`` until the profile passes its sanity checks (:func:`stitchkit.cost.profile_checks.measure_checked`, at
    most ``attempts`` times). Returns the costs and the problems left (empty: trustworthy).
    ``latent_frames``: a video pair's latent frames at ``key.frames``."""
    from stitchkit.cost.profile_checks import measure_checked

    try:
        from stitchkit.pipeline.pairs import load_pair_transformers
    except ImportError:
        raise ConfigError("--pair", f"cannot load {key.pair!r}: this install has no pair loader",
                          "stitchkit.pipeline.pairs.load_pair_transformers is missing") from None
    large, small, _pair_id = load_pair_transformers(key.pair)
    family = get_registry().family_for_transformer(large, path="--pair") if large is not None else None
    return measure_checked(lambda timings: profile_transformers(
        large, small,
        latent_height=key.height // vae_scale_factor, latent_width=key.width // vae_scale_factor,
        text_tokens=key.text_tokens, batch=key.batch, dtype=key.dtype, device=key.device, ratios=ratios,
        warmup=warmup, repeats=repeats, num_threads=num_threads, timings=timings, latent_frames=latent_frames,
        family=family,
    ), attempts=attempts)


@click.command("profile")
@click.option("--pair", required=True, help="The pair to profile (e.g. tiny-random).")
@click.option("--height", required=True, metavar="PX", help="Image (or video frame) height in pixels.")
@click.option("--width", required=True, metavar="PX", help="Image (or video frame) width in pixels.")
@click.option("--num-frames", default="", metavar="N",
              help="Frames per video, for a video pair (default: its own, as `run` without sampler.num_frames).")
@click.option("--dtype", default="float32", show_default=True, help=f"One of {', '.join(DTYPES)}.")
@click.option("--device", default="cpu", show_default=True, help="A torch device (cpu, cuda, cuda:1, mps).")
@click.option("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS), show_default=True,
              metavar="M1,...", help="Mask ratios to time the masked forward at.")
@click.option("--batch", default="2", show_default=True,
              help="Transformer batch (2: one image with guidance).")
@click.option("--text-tokens", default="", metavar="N",
              help="Text tokens (default: what the pair's encoder produces at --max-sequence-length, as `run` "
                   "sees them).")
@click.option("--max-sequence-length", default="256", show_default=True,
              help="The experiment's sampler.max_sequence_length, which sets the default --text-tokens.")
@click.option("--warmup", default="5", show_default=True,
              help="Untimed calls before timing (the first calls after loading are slow).")
@click.option("--repeats", default="5", show_default=True, help="Timed calls; the median is kept.")
@click.option("--threads", default="", metavar="N",
              help="CPU threads while measuring (default: the pair's, see stitchkit.cost.threads); "
                   "1 gives repeatable CPU timings.")
@click.option("--vae-scale-factor", default="", metavar="N",
              help="Pixels per latent pixel (default: the pair's VAE factor; 1 for a pixel-space pair). "
                   "With --text-tokens too, and no --num-frames, the pair is not inspected (an image pair).")
@click.option("--refresh", is_flag=True, help="Measure again even if a cached profile exists.")
@click.option("--allow-noisy", is_flag=True,
              help="Cache a profile that failed its sanity checks (noisy repeats, masked cost not rising).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object of the costs.")
def profile(pair: str, height: str, width: str, num_frames: str, dtype: str, device: str, ratios: str, batch: str,
            text_tokens: str, max_sequence_length: str, warmup: str, repeats: str, threads: str,
            vae_scale_factor: str, refresh: bool, allow_noisy: bool, as_json: bool) -> None:
    """Measure L_l, L_s and the masked L_l(M) of a pair (medians after warm-up); cache and print them."""
    frames = _positive("--num-frames", num_frames) if num_frames.strip() else None
    shape = None
    if not vae_scale_factor.strip() or not text_tokens.strip() or frames is not None:
        # the pair's own, so the key is the one `run` loads
        shape = pair_shape(pair, _positive("--max-sequence-length", max_sequence_length), num_frames=frames,
                           sides=(_positive("--height", height), _positive("--width", width)))
        vae_scale_factor = vae_scale_factor.strip() or str(shape.vae_scale_factor)
        text_tokens = text_tokens.strip() or str(shape.text_tokens)
    scale = _positive("--vae-scale-factor", vae_scale_factor)
    size = {}
    for option, text, patch in (("--height", height, shape and shape.patch[-2]),
                                ("--width", width, shape and shape.patch[-1])):
        value = _positive(option, text)
        if value % scale:
            raise ConfigError(option, f"{value} is not a multiple of the VAE scale factor {scale}",
                              f"use a multiple of {scale}"
                              + (f" (of {patch * scale} for the pair's patch size {patch})" if patch else ""))
        size[option] = value
    if dtype not in DTYPES:
        raise ConfigError("--dtype", f"{dtype!r} is not a profiling dtype", f"one of {', '.join(DTYPES)}")
    grid = parse_floats("--ratios", ratios)
    if not grid:
        raise ConfigError("--ratios", "is empty", "give at least one mask ratio")
    for r in grid:
        if not 0.0 < r < 1.0:
            raise ConfigError("--ratios", f"{r:g} is outside (0, 1)",
                              "mask ratios lie strictly between 0 and 1")
    if len(set(grid)) != len(grid):
        raise ConfigError("--ratios", "a ratio is given twice", "give each ratio once")
    n_warmup = _positive("--warmup", warmup, minimum=0)
    n_repeats = _positive("--repeats", repeats)
    n_threads = _positive("--threads", threads) if threads.strip() else None
    where = _device(device)
    if where == "cpu" and n_threads is None:
        n_threads = _pair_threads(pair)
    video = shape is not None and shape.num_frames is not None
    key = ProfileKey(pair=pair, height=size["--height"], width=size["--width"], dtype=dtype, device=where,
                     batch=_positive("--batch", batch), text_tokens=_positive("--text-tokens", text_tokens, minimum=0),
                     threads=(n_threads or cpu_threads(where)) if where == "cpu" else 0,
                     frames=shape.num_frames if video else 0)

    costs = None if refresh else load_profile(key)
    if costs is not None and {r for r, _ in costs.masked_ms} >= set(grid):
        click.echo(f"cached profile: {profile_path(key)}")
    else:
        from stitchkit.cost.threads import machine_busy

        costs, problems = measure_pair(key, vae_scale_factor=scale, ratios=grid, warmup=n_warmup,
                                       repeats=n_repeats, num_threads=n_threads,
                                       latent_frames=shape.latent_frames if video else None)
        validate_costs(costs)
        busy = machine_busy(key.threads or 1)
        if problems and not allow_noisy:
            raise ConfigError("profile", f"{problems[0]} after 3 attempts" + (f"; {busy}" if busy else ""),
                              "measure on a quiet machine (--threads 1 helps), or --allow-noisy to cache it anyway")
        for problem in problems:
            click.echo(f"warning: {problem}; cached anyway (--allow-noisy)", err=True)
        import os

        extra = {"warmup": n_warmup, "repeats": n_repeats, "threads": n_threads, "problems": problems,
                 "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        path = save_profile(key, costs, extra=extra)
        click.echo(f"profiled {pair} at {key.height}x{key.width}" + (f", {key.frames} frames," if key.frames else "")
                   + f" {dtype} on {key.device} "
                   f"(batch {key.batch}, {key.text_tokens} text tokens; median of {n_repeats} after "
                   f"{n_warmup} warm-up); saved to {path}")
    for line in format_costs(costs):
        click.echo(line)
    if as_json:
        click.echo(json.dumps({"key": key.to_dict(), **costs.to_dict()}))


@attrs.frozen(kw_only=True)
class PairShape:
    """What a profile's key and inputs take from the pair, asked of its adapter."""

    vae_scale_factor: int
    #: Text tokens its encoder produces at the run's max_sequence_length.
    text_tokens: int
    #: The transformer's patch along each latent axis (the last two: rows, columns).
    patch: tuple[int, ...]
    #: A video pair's frames per sample, and its latent frames; None for an image pair.
    num_frames: int | None = None
    latent_frames: int | None = None


def pair_shape(pair: str, max_sequence_length: int, *, num_frames: int | None = None,
               sides: tuple[int, int] | None = None) -> PairShape:
    """The pair's VAE scale factor, the text length its encoder produces (one prompt encoded), its patch and,
    for a video pair, its frames (``num_frames``, else its default; an image pair refuses ``--num-frames``):
    the numbers `run` and `plan` put in the profile key, from the pair's own adapter. ``sides``: ``(--height,
    --width)``, refused here when the pair cannot make them (:func:`stitchkit.pipeline.sizes.check_sides`)."""
    import torch

    from stitchkit.tokens import patch_tuple
    from stitchkit.pipeline.pairs import load_pair_pipeline
    from stitchkit.pipeline.sizes import check_sides
    from stitchkit.pipeline.video import frames_for

    try:
        pipe = load_pair_pipeline(pair)
    except ConfigError as err:
        raise ConfigError("--pair", err.problem, err.allowed) from None
    adapter = pipe.adapter
    if sides is not None:
        check_sides(adapter, pipe.small, *sides, prefix="--", multiples=False)  # the multiple: profile()
    frames = frames_for(adapter, num_frames, "--num-frames")
    with torch.no_grad():
        cond = adapter.encode(guidance_scale=1.0, num_images_per_prompt=1,
                              max_sequence_length=max_sequence_length, prompt="a", prompt_2=None, prompt_3=None)
    patch = adapter.patch_size
    return PairShape(vae_scale_factor=int(adapter.vae_scale_factor), text_tokens=int(cond.prompt_embeds.shape[1]),
                     patch=patch_tuple(patch, 2) if isinstance(patch, int) else tuple(int(q) for q in patch),
                     num_frames=frames, latent_frames=None if frames is None else int(adapter.latent_frames(frames)))


def _pair_threads(pair: str) -> int | None:
    """The thread count the pair runs with by default (:func:`stitchkit.cost.threads.default_threads`), so the
    profile prices runs as they happen; ``None`` (torch's own) when the pair cannot be inspected here."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        from stitchkit.pipeline.pairs import load_pair_transformers
        from stitchkit.cost.threads import default_threads

        large, small, _ = load_pair_transformers(pair)
    except (ImportError, ConfigError):
        return None
    return default_threads(large, small)


command = profile
