"""Video outputs: an MP4 through diffusers' ``export_to_video`` and a frame strip (PNG) for grids, plus a
mask strip that shows a hybrid step's tokens on chosen frames (tokens are (frame, row, column)).

``export_to_video`` writes with imageio and imageio-ffmpeg, whose wheel carries its own ffmpeg binary:
nothing is downloaded at run time (pyproject's ``video`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


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


def frame_strip(frames, *, count: int = 8, gap: int = 2):
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
    from PIL import Image

    array = _frames_array(frames)
    num_frames, height, width = array.shape[:3]
    t, rows, cols = (int(g) for g in grid)
    latent_frames = latent_frames or t
    chosen = np.zeros(t * rows * cols, dtype=bool)
    chosen[np.asarray(list(indices), dtype=np.int64)] = True
    chosen = chosen.reshape(t, rows, cols)
    pixel_row = np.arange(height) * rows // height  # the token row of each pixel row
    pixel_col = np.arange(width) * cols // width
    picked = chosen_frames(num_frames, count)
    out = Image.new("RGB", (len(picked) * width + (len(picked) - 1) * gap, height), (255, 255, 255))
    for i, f in enumerate(picked):
        token_frame = latent_frame(f, num_frames, latent_frames) * t // latent_frames
        weight = np.where(chosen[token_frame], 1.0, dim)[pixel_row][:, pixel_col]
        frame = (array[f].astype(np.float32) * weight[..., None]).astype(np.uint8)
        out.paste(Image.fromarray(frame), (i * (width + gap), 0))
    return out
