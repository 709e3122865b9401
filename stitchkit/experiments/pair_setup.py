"""The pair an experiment runs on, and what every unit of it shares: the loaded pipeline, its threads, the
sampler settings units run with, the size and text length they run at, the plan checks of each method and
the pair's measured step costs (the profile). The runner, ``plan``, ``--dry-run`` and calibration all set a
run up through these, so they load, size and price a pair the same way.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import attrs
import torch

from stitchkit.cost.profile import ProfileKey, cpu_threads, load_profile, profile_transformers, save_profile
from stitchkit.cost.profile_checks import measure_checked
from stitchkit.cost.threads import apply_threads
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.pipeline import StitchPipeline
from stitchkit.pipeline.sizes import check_sides
from stitchkit.pipeline.video import frames_for, latent_shape

logger = logging.getLogger(__name__)


def load_pair(config: ExperimentConfig):
    """The StitchPipeline the experiment's ``pair`` names, compiled when the experiment says ``compile``."""
    pair = config.pair
    try:
        if pair.name is not None:
            pipe = StitchPipeline.from_pair(pair.name, registry=config.registry)
        else:
            pipe = StitchPipeline.from_pretrained(pair.large, pair.small, torch_dtype=getattr(torch, pair.dtype),
                                                  device=pair.device, registry=config.registry)
    except ConfigError as err:  # the pair check's `small.config.patch_size` is the experiment's pair.small...
        if err.path.split(".")[0] in ("large", "small"):
            raise err.at("pair") from None
        raise
    if config.compile is not None:
        pipe.compile_repeated_blocks(**config.compile)
    return pipe


def ran_sampler(pipe, config: ExperimentConfig) -> dict[str, Any]:
    """The sampler settings every unit runs with, the pair's default size (and a video pair's default frame
    count) filled in."""
    s = config.sampler
    height, width = _default_sides(pipe)
    sampler = {"steps": s.steps, "height": s.height or height, "width": s.width or width,
               "guidance_scale": s.guidance_scale}
    frames = frames_for(pipe.adapter, s.num_frames, "sampler.num_frames")
    if frames is not None:  # an image's record keeps the fields it always had
        sampler["num_frames"] = frames
    return sampler


def _default_sides(pipe) -> tuple[int, int]:
    """The pair's default ``(height, width)`` (an adapter gives one side of a square, or both)."""
    default = pipe.adapter.default_size()
    return (default, default) if isinstance(default, int) else tuple(default)


def use_threads(pipe, config: ExperimentConfig) -> int:
    """Set torch's threads for this run before any model runs: ``sampler.threads`` (``--threads``), else
    ``OMP_NUM_THREADS``, else the pair's default (:mod:`stitchkit.cost.threads`). Returns the count (0 on a GPU).
    The pipeline's calls keep that count (``pipe.threads``, :mod:`stitchkit.pipeline.thread_policy`)."""
    threads = apply_threads(config.sampler.threads, pipe.adapter.large_transformer, pipe.small,
                            device=pipe.adapter.device.type)
    pipe.threads = threads or None
    return threads


def load_average() -> float | None:
    """The 1-minute load average when a unit finished (its timings are suspect when it exceeds the cores)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@attrs.frozen(kw_only=True)
class RunSize:
    height: int
    width: int
    text_tokens: int
    guided: bool
    #: A video pair's frames per unit; None for images.
    num_frames: int | None = None


def run_size(pipe, config: ExperimentConfig) -> RunSize:
    """The image size (a video's frames) and text length every unit of this experiment runs at (one prompt
    encoded to see). ``sampler.num_frames`` is checked here against the loaded pair (refused on images)."""
    sampler = ran_sampler(pipe, config)
    check_sides(pipe.adapter, pipe.small, sampler["height"], sampler["width"], prefix="sampler.")
    s = config.sampler
    with torch.no_grad():
        cond = pipe.adapter.encode(guidance_scale=s.guidance_scale, num_images_per_prompt=1,
                                   max_sequence_length=s.max_sequence_length, prompt=config.prompts[0],
                                   prompt_2=None, prompt_3=None)
    return RunSize(height=sampler["height"], width=sampler["width"], text_tokens=cond.prompt_embeds.shape[1],
                 guided=cond.guided, num_frames=sampler.get("num_frames"))


def check_methods(pipe, config: ExperimentConfig, size: RunSize) -> None:
    """Refuse, before anything runs, every method whose masks break Eq. 7-8 for this pair and size."""
    for i, method in enumerate(config.methods):
        pipe.check_plan(method.switch, context=method.context, height=size.height, width=size.width,
                        text_tokens=size.text_tokens,
                        guided=size.guided, allow_unprofitable=config.allow_unprofitable,
                        path=f"methods[{i}].switch", num_frames=size.num_frames)


def ensure_profile(pipe, config: ExperimentConfig, size: RunSize):
    """The pair's measured costs at this size: the cached profile, or one measured now and cached."""
    latent = latent_shape(pipe.adapter, height=size.height, width=size.width, num_frames=size.num_frames)
    dtype = str(pipe.adapter.dtype).removeprefix("torch.")
    device = pipe.adapter.device.type
    key = ProfileKey(pair=pipe.pair_id, height=size.height, width=size.width, dtype=dtype, device=device,
                     batch=2 if size.guided else 1, text_tokens=size.text_tokens, threads=cpu_threads(device),
                     frames=size.num_frames or 0)
    costs = load_profile(key)
    if costs is not None:
        logger.info("profile of %s at %dx%d read from the cache (threads %s): L_l %.1f ms, "
                                         "L_s %.1f ms", key.pair, key.height, key.width, key.threads,
                                         costs.large_ms, costs.small_ms)
    if costs is None:
        logger.info("profile of %s at %dx%d (threads %s): not cached, measuring it now", key.pair, key.height,
                    key.width, key.threads)
        costs, problems = measure_checked(lambda timings: profile_transformers(
            pipe.adapter.large_transformer, pipe.small, latent_height=latent[-2], latent_width=latent[-1],
            latent_frames=latent[0] if len(latent) == 3 else None, text_tokens=size.text_tokens, batch=key.batch,
            dtype=getattr(torch, dtype), device=device, num_threads=torch.get_num_threads(), timings=timings,
            family=pipe.family))
        if problems:  # used for this run's predictions, never cached: a noisy profile would price every later run
            warnings.warn(f"profile of {key.pair} is noisy ({problems[0]}); not cached; predictions of this run "
                          "are unreliable", stacklevel=2)
        else:
            save_profile(key, costs, extra={"load": load_average()})
    return costs
