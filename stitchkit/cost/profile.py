"""Measured (or estimated) step costs for the latency model: ``L_l``, ``L_s`` and the masked ``L_l(M)``.

:func:`profile_transformers` times the two transformers of a pair on random inputs of the right shapes
(warm-up, then the median of several repeats), the large one also masked over a grid of ratios through
its family's masked runner (:mod:`stitchkit.families`). Profiles are cached as JSON, one file per
:class:`ProfileKey`, under ``$STITCHKIT_CACHE/profiles`` (default ``~/.cache/stitchkit/profiles``).

Without a profile, :func:`estimate_costs_from_configs` estimates the same numbers from the two configs'
FLOPs, in units of one large step: an estimate, and marked as one (``Costs.source = "flops-estimate"``).

torch is imported only inside the functions that run models, so the cache and the FLOP model stay cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from stitchkit.errors import ConfigError
from stitchkit.cost.latency import Costs
from stitchkit.models.flops import transformer_config as _config
from stitchkit.models.flops import transformer_flops
from stitchkit.models.stock import small_forward_fn
from stitchkit.protocols import ModelInputs
from stitchkit.tokens import patch_tuple

__all__ = [
    "DEFAULT_RATIOS",
    "DTYPES",
    "ProfileKey",
    "estimate_costs_from_configs",
    "format_costs",
    "load_profile",
    "profile_dir",
    "profile_path",
    "profile_transformers",
    "save_profile",
    "transformer_flops",
]

#: The grid of mask ratios profiled unless told otherwise.
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
#: The dtypes a profile can be taken in, by the names the CLI and the cache use.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Bumped when the cache file's layout changes; older files are then ignored.
CACHE_VERSION = 1

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- cache


@attrs.frozen(kw_only=True)
class ProfileKey:
    """What a profile depends on: the pair, the image size in pixels, dtype and device; also the batch the
    transformers see (2 with classifier-free guidance) and the number of text tokens (333 in SD3's pipeline:
    77 CLIP + 256 T5 positions), since both change the cost."""

    pair: str
    height: int
    width: int
    dtype: str
    device: str
    batch: int = 2
    text_tokens: int = 333
    #: CPU threads the costs were measured with (0 on a GPU): two threads are not twice one, and a profile
    #: taken with one thread mispredicts a run with two.
    threads: int = 0
    #: Video frames per sample (0: an image). Left out of the file name and the stored key when 0, so an
    #: image's profile keeps the name and key it always had.
    frames: int = 0

    def filename(self) -> str:
        """A file name safe on every platform (the key itself is stored inside the file and checked)."""
        raw = (f"{self.pair}-{self.height}x{self.width}" + (f"x{self.frames}f" if self.frames else "")
               + f"-{self.dtype}-{self.device}-b{self.batch}-t{self.text_tokens}"
               + (f"-th{self.threads}" if self.threads else ""))
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw) + ".json"

    def to_dict(self) -> dict:
        return attrs.asdict(self, filter=lambda field, value: not (field.name == "frames" and value == 0))


def profile_dir() -> Path:
    """``$STITCHKIT_CACHE/profiles``, else ``$XDG_CACHE_HOME/stitchkit/profiles``, else
    ``~/.cache/stitchkit/profiles``."""
    root = os.environ.get("STITCHKIT_CACHE")
    if root:
        return Path(root).expanduser() / "profiles"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "stitchkit" / "profiles"


def profile_path(key: ProfileKey, directory: str | os.PathLike | None = None) -> Path:
    """Where the profile of ``key`` lives."""
    return Path(directory if directory is not None else profile_dir()) / key.filename()


def load_profile(key: ProfileKey, *, directory: str | os.PathLike | None = None) -> Costs | None:
    """The cached costs of ``key``, or ``None`` when there are none (or the file is unreadable, of another
    cache version, or holds another key)."""
    path = profile_path(key, directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION or data.get("key") != key.to_dict():
            return None
        return Costs.from_dict(data["costs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_profile(key: ProfileKey, costs: Costs, *, directory: str | os.PathLike | None = None,
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``costs`` for ``key`` atomically (a temporary file in the same folder, then ``os.replace``), so a
    reader never sees half a file; ``extra`` (e.g. warm-up and repeats) is stored beside it.
    Returns the path."""
    path = profile_path(key, directory)
    logger.info("profile of %s at %dx%d measured: L_l %.1f ms, L_s %.1f ms; cached at %s", key.pair, key.height,
              key.width, costs.large_ms, costs.small_ms, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": CACHE_VERSION, "key": key.to_dict(), "costs": costs.to_dict(), **dict(extra or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------------------------- FLOPs


def estimate_costs_from_configs(large_config: Any, small_config: Any, num_image_tokens: int,
                                num_text_tokens: int, *, ratios: Sequence[float] = DEFAULT_RATIOS,
                                large_ms: float = 1.0, flops: Callable[..., float] | None = None) -> Costs:
    """Costs estimated from the two transformers' FLOPs (:func:`transformer_flops`) when no profile exists.

    ``L_l = large_ms`` (by default 1: the results are in large steps), ``L_s = large_ms · F_s / F_l`` and
    ``L_l(M) = large_ms · F_l(M) / F_l``. An estimate, marked ``source="flops-estimate"``: it ignores memory
    traffic and per-layer overhead, which make small models and small masks relatively dearer than their
    FLOPs (NOTES-sd3.md measured 0.21 of a full step at M = 0.1 where this model says 0.16). ``flops`` is
    the model family's FLOP model (same signature as :func:`transformer_flops`, the default).
    """
    flops = flops or transformer_flops
    full = flops(large_config, num_image_tokens, num_text_tokens)
    small = flops(small_config, num_image_tokens, num_text_tokens)
    masked = [(float(r), large_ms * flops(large_config, num_image_tokens, num_text_tokens,
                                          mask_ratio=float(r)) / full) for r in ratios]
    return Costs(large_ms=large_ms, small_ms=large_ms * small / full, masked_ms=masked,
                 source="flops-estimate")


# --------------------------------------------------------------------------------------------- measuring


def _resolve_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"{dtype!r} is not a profiling dtype", f"one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _synchronizer(device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _median_ms(fn: Callable[[], Any], *, warmup: int, repeats: int, sync: Callable[[], None],
               times_out: list | None = None) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after ``warmup`` untimed ones (every time is
    appended to ``times_out`` when given, for :mod:`stitchkit.cost.profile_checks`)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    if times_out is not None:
        times_out.extend(times)
    return statistics.median(times)


def random_inputs(transformer, *, latent_height: int, latent_width: int, text_tokens: int, batch: int,
                  dtype, device, seed: int = 0):
    """Random :class:`~stitchkit.protocols.ModelInputs` of the shapes ``transformer`` expects."""
    import torch

    c = _config(transformer)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, int(c["in_channels"]), latent_height, latent_width, generator=g)
    text = torch.randn(batch, text_tokens, int(c["joint_attention_dim"]), generator=g)
    pooled = torch.randn(batch, int(c["pooled_projection_dim"]), generator=g)
    return ModelInputs(
        hidden_states=hidden.to(device=device, dtype=dtype),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        encoder_hidden_states=text.to(device=device, dtype=dtype),
        pooled_projections=pooled.to(device=device, dtype=dtype),
    )


def _move(model, device, dtype):
    """``model`` on ``device`` in ``dtype``, in eval mode; ``.to`` only when needed (diffusers warns)."""
    param = next(model.parameters())
    if param.dtype != dtype:
        model = model.to(dtype=dtype)
    if param.device != device:
        model = model.to(device=device)
    return model.eval()


def profile_transformers(large, small, *, latent_height: int, latent_width: int, text_tokens: int,
                         batch: int = 2, dtype: Any = "float32", device: Any = "cpu",
                         ratios: Sequence[float] = DEFAULT_RATIOS, warmup: int = 5, repeats: int = 5,
                         seed: int = 0, num_threads: int | None = None,
                         timings: dict[str, list[float]] | None = None, latent_frames: int | None = None,
                         family: Any) -> Costs:
    """Measure ``L_l``, ``L_s`` and the masked ``L_l(M)`` of two ``SD3Transformer2DModel``s, in ms per step.

    Inputs are random, of the shapes a pipeline hands the transformers: latents ``(batch, C, H, W)``
    (``latent_height`` × ``latent_width``, i.e. pixels / the VAE's scale factor), text
    ``(batch, text_tokens, joint_attention_dim)`` and pooled ``(batch, pooled_projection_dim)``; ``batch`` is
    2 for one image with guidance. ``L_l``/``L_s`` time the plain forward. ``L_l(M)`` times
    ``MaskedTransformer.forward_masked`` on ``round(M·N)`` random tokens per sample (at least one), after
    one recording forward has filled the K/V context, as in a hybrid step. Each number is the median of
    ``repeats`` calls after ``warmup`` untimed ones, under ``torch.no_grad`` as in the engine. The models are moved to
    ``device`` and ``dtype`` in place (``nn.Module.to``) and put in eval mode. ``num_threads`` sets torch's
    CPU threads while measuring (restored after): on a loaded machine several busy-waiting OpenMP threads
    can make CPU timings tens of times slower and erratic, and one thread makes them repeatable.
    ``timings``, when given, receives every timed call per quantity (``"large"``, ``"small"``,
    ``"masked 0.3"``) so that :func:`stitchkit.cost.profile_checks.check_profile` can judge the spread.
    ``latent_frames`` (a video family): latents ``(batch, C, F, H, W)``, the inputs made by the family's
    ``random_inputs``; tokens are then (frame, row, column). ``family``: the pair's
    :class:`~stitchkit.families.Family`, whose masked runner, stock forward and random inputs time the
    models (a pipeline hands in ``pipe.family``; ``registry.family_for_transformer(large)`` finds it).
    """
    import torch

    if warmup < 0:
        raise ConfigError("warmup", f"{warmup} is below 0", "must be 0 or more")
    if repeats < 1:
        raise ConfigError("repeats", f"{repeats} is below 1", "must be at least 1")
    if num_threads is not None and num_threads < 1:
        raise ConfigError("num_threads", f"{num_threads} is below 1",
                          "must be at least 1, or None for torch's default")
    for i, r in enumerate(ratios):
        if not 0.0 < float(r) < 1.0:
            raise ConfigError(f"ratios[{i}]", f"{r!r} is outside (0, 1)",
                              "profile mask ratios strictly between 0 and 1")
    torch_dtype = _resolve_dtype(dtype)
    dev = torch.device(device)
    sync = _synchronizer(dev)
    large, small = _move(large, dev, torch_dtype), _move(small, dev, torch_dtype)
    latent = (latent_height, latent_width) if latent_frames is None else (latent_frames, latent_height, latent_width)
    raw_patch = _config(large)["patch_size"]
    patch = patch_tuple(raw_patch, len(latent))
    if any(side % q for side, q in zip(latent, patch)):
        shown = raw_patch if isinstance(raw_patch, int) else "x".join(map(str, patch))
        raise ConfigError("latent size",
                          f"{'x'.join(map(str, latent))} is not divisible by the patch size {shown}",
                          f"use a size that is a multiple of {shown} latent pixels")
    n_tokens = math.prod(side // q for side, q in zip(latent, patch))
    shapes = dict(text_tokens=text_tokens, batch=batch, dtype=torch_dtype, device=dev, seed=seed)
    make = family.random_inputs
    if make is None and latent_frames is not None:
        raise ConfigError("latent_frames", "the large model's family makes images", "leave it unset")
    if make is None:
        inputs_large = random_inputs(large, latent_height=latent_height, latent_width=latent_width, **shapes)
        inputs_small = random_inputs(small, latent_height=latent_height, latent_width=latent_width, **shapes)
    else:
        inputs_large = make(large, latent_shape=latent, **shapes)
        inputs_small = make(small, latent_shape=latent, **shapes)
    timing = dict(warmup=warmup, repeats=repeats, sync=sync)
    g = torch.Generator().manual_seed(seed + 1)
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _measure(large, small, inputs_large, inputs_small, ratios=ratios, n_tokens=n_tokens,
                        batch=batch, device=dev, generator=g, timing=timing, timings=timings, family=family)
    finally:
        torch.set_num_threads(threads)


def _measure(large, small, inputs_large, inputs_small, *, ratios, n_tokens, batch, device, generator,
             timing, family, timings=None) -> Costs:
    import torch

    def out(name: str):
        return None if timings is None else timings.setdefault(name, [])

    masked: list[tuple[float, float]] = []
    # no_grad, as the engine runs: inference_mode is a little faster and would make the profile optimistic.
    with torch.no_grad():
        large_ms = _median_ms(lambda: family.forward(large, inputs_large), **timing, times_out=out("large"))
        # The small model is timed as the engine calls it (replayed from a CUDA graph on a GPU).
        small_call = small_forward_fn(small, torch.device(device), family.forward)
        small_ms = _median_ms(lambda: small_call(inputs_small), **timing, times_out=out("small"))
        with family.masked_runner(large) as runner:
            runner.forward(inputs_large, record=True)
            for r in ratios:
                m = max(1, round(float(r) * n_tokens))
                indices = torch.stack([torch.randperm(n_tokens, generator=generator)[:m].sort().values
                                       for _ in range(batch)]).to(device)
                ms = _median_ms(lambda idx=indices: runner.forward_masked(inputs_large, idx), **timing,
                                times_out=out(f"masked {float(r):g}"))
                masked.append((float(r), ms))
    return Costs(large_ms=large_ms, small_ms=small_ms, masked_ms=masked, source="profile")


# ---------------------------------------------------------------------------------------------- printing


def format_costs(costs: Costs) -> list[str]:
    """A table of the costs: ms and share of a large step, the paper's ``L_l · M`` beside ``L_l(M)``."""
    ll = costs.large_ms
    note = "  (an estimate from FLOPs, in large steps)" if costs.source == "flops-estimate" else ""
    lines = [f"{'':14}{'ms':>10}{'/ Ll':>8}{'paper':>8}{note}",
             f"{'large':14}{ll:10.3f}{1.0:8.3f}{1.0:8.3f}",
             f"{'small':14}{costs.small_ms:10.3f}{costs.small_ms / ll:8.3f}"]
    for r, ms in costs.masked_ms:
        lines.append(f"{f'masked M={r:g}':14}{ms:10.3f}{ms / ll:8.3f}{r:8.3f}")
    lines.append(f"Eq. 7 bound: M_1 < 1 - Ls/Ll = {1.0 - costs.small_ms / ll:.3f}")
    return lines


def cpu_threads(device: str) -> int:
    """The thread count a CPU profile is keyed by (torch's current setting); 0 for other devices."""
    import torch

    return torch.get_num_threads() if device == "cpu" else 0
