"""Video outputs: an MP4 through diffusers' ``export_to_video`` and a frame strip (PNG) for grids, plus a
mask strip that shows a hybrid step's tokens on chosen frames (tokens are (frame, row, column)).

``export_to_video`` writes with imageio and imageio-ffmpeg, whose wheel carries its own ffmpeg binary:
nothing is downloaded at run time (pyproject's ``wan`` extra).

Whether a pair makes videos is its adapter's business (:class:`stitchkit.families.family.VideoAdapter`):
:func:`frames_for` and :func:`latent_shape` ask it without naming a family.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stitchkit.errors import ConfigError

#: Frames in a unit's strip (the experiment runner's PNG for a video: grid cell, metrics, resume).
STRIP_FRAMES = 8
#: Pixels between two frames of a strip.
STRIP_GAP = 2


def is_video(adapter: Any) -> bool:
    """Does ``adapter``'s pipeline make videos (it has ``check_num_frames``)?"""
    return callable(getattr(adapter, "check_num_frames", None))


def frames_for(adapter: Any, num_frames: int | None, path: str = "num_frames") -> int | None:
    """The frames a generation with ``num_frames`` makes: the video family's count (its default when
    ``None``), checked against its VAE; ``None`` for an image pair, which refuses a frame count at ``path``."""
    if is_video(adapter):
        return adapter.check_num_frames(num_frames, path)
    if num_frames is not None:
        raise ConfigError(path, "this pair makes images, not videos", "leave it unset")
    return None


def latent_shape(adapter: Any, *, height: int, width: int, num_frames: int | None = None) -> tuple[int, ...]:
    """The latents' spatial shape: ``(H, W)`` for an image pair, ``(F, H, W)`` for a video pair."""
    factor = int(adapter.vae_scale_factor)
    frames = frames_for(adapter, num_frames)
    spatial = (height // factor, width // factor)
    return spatial if frames is None else (int(adapter.latent_frames(frames)), *spatial)


def _frames_array(frames) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 from a frame array in [0, 1] (``output_type="np"``) or a list of PIL frames."""
    if isinstance(frames, np.ndarray):
        array = frames
    else:
        array = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (F, H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return array


def save_video(frames, path: str | Path, *, fps: int = 16) -> Path:
    """Write one video's frames (``(F, H, W, 3)`` in [0, 1], or PIL frames) as an MP4; return the path.
    16 fps is Wan 2.1's frame rate."""
    from diffusers.utils import export_to_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = _frames_array(frames)
    export_to_video([frame for frame in array], str(path), fps=fps)
    return path


def chosen_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly from the first to the last (all of them when fewer)."""
    if num_frames <= count:
        return list(range(num_frames))
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]


def frame_strip(frames, *, count: int = STRIP_FRAMES, gap: int = STRIP_GAP):
    """A PIL image of ``count`` evenly spread frames side by side, for a grid cell or a README."""
    from PIL import Image

    array = _frames_array(frames)
    picked = [array[i] for i in chosen_frames(len(array), count)]
    height, width = picked[0].shape[:2]
    strip = Image.new("RGB", (len(picked) * width + (len(picked) - 1) * gap, height), (255, 255, 255))
    for i, frame in enumerate(picked):
        strip.paste(Image.fromarray(frame), (i * (width + gap), 0))
    return strip


def latent_frame(frame: int, num_frames: int, latent_frames: int) -> int:
    """The latent frame that video frame ``frame`` comes from: a causal video VAE keeps the first frame on
    its own and folds each following group of ``(num_frames - 1) / (latent_frames - 1)`` frames into one."""
    if frame == 0 or latent_frames == 1:
        return 0
    per_latent = max(1, (num_frames - 1) // (latent_frames - 1))
    return min(latent_frames - 1, (frame - 1) // per_latent + 1)


def mask_strip(frames, grid: Sequence[int], indices: Sequence[int], *, latent_frames: int | None = None,
               count: int = 4, dim: float = 0.3, gap: int = 2):
    """A strip of chosen frames with the tokens outside ``indices`` dimmed: the mask of a hybrid step on
    video tokens. ``grid`` is the token grid ``(frames, rows, columns)``; ``latent_frames`` the latents'
    frame count (``grid[0]`` unless the patch spans frames)."""
    array = _frames_array(frames)
    picked = chosen_frames(len(array), count)
    return _dimmed_strip([array[f] for f in picked], picked, len(array), grid, indices,
                         latent_frames=latent_frames, dim=dim, gap=gap)


def strip_mask_view(strip, *, num_frames: int, grid: Sequence[int], indices: Sequence[int],
                    count: int = STRIP_FRAMES, gap: int = STRIP_GAP, latent_frames: int | None = None,
                    dim: float = 0.3):
    """:func:`mask_strip` drawn on a saved :func:`frame_strip` (``count`` frames of a ``num_frames`` video,
    ``gap`` apart) instead of the frames themselves: what masks.png shows for a unit of a video run."""
    picked = chosen_frames(num_frames, count)
    width = (strip.width - (len(picked) - 1) * gap) // len(picked)
    pixels = np.asarray(strip.convert("RGB"))
    frames = [pixels[:, i * (width + gap):i * (width + gap) + width] for i in range(len(picked))]
    return _dimmed_strip(frames, picked, num_frames, grid, indices, latent_frames=latent_frames, dim=dim, gap=gap)


def _dimmed_strip(frames: list[np.ndarray], picked: list[int], num_frames: int, grid: Sequence[int],
                  indices: Sequence[int], *, latent_frames: int | None, dim: float, gap: int):
    """Frames ``picked`` (their numbers in a ``num_frames`` video) side by side, each with the tokens of its
    latent frame outside ``indices`` dimmed."""
    from PIL import Image

    height, width = frames[0].shape[:2]
    t, rows, cols = (int(g) for g in grid)
    latent_frames = latent_frames or t
    chosen = np.zeros(t * rows * cols, dtype=bool)
    chosen[np.asarray(list(indices), dtype=np.int64)] = True
    chosen = chosen.reshape(t, rows, cols)
    pixel_row = np.arange(height) * rows // height  # the token row of each pixel row
    pixel_col = np.arange(width) * cols // width
    out = Image.new("RGB", (len(picked) * width + (len(picked) - 1) * gap, height), (255, 255, 255))
    for i, (f, pixels) in enumerate(zip(picked, frames)):
        token_frame = latent_frame(f, num_frames, latent_frames) * t // latent_frames
        weight = np.where(chosen[token_frame], 1.0, dim)[pixel_row][:, pixel_col]
        frame = (pixels.astype(np.float32) * weight[..., None]).astype(np.uint8)
        out.paste(Image.fromarray(frame), (i * (width + gap), 0))
    return out
