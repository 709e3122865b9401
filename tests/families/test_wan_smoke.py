"""Smoke run of the wan-tiny-random pair by name, written out as MP4 and frame/mask strips."""

import numpy as np
import pytest

from stitchkit.families.wan.tiny_random import MAX_LENGTH
from stitchkit.pipeline.pairs import load_pair_pipeline
from stitchkit.pipeline.video import frame_strip, latent_frame, mask_strip, save_video


def test_wan_tiny_random_runs_by_name_and_writes_video(tmp_path):
    pipe = load_pair_pipeline("wan-tiny-random")
    assert pipe.pair_id == "wan-tiny-random" and pipe.family.name == "wan"
    seen = []
    out = pipe("a red circle", height=32, width=48, num_frames=9, num_inference_steps=6, guidance_scale=5.0,
               max_sequence_length=MAX_LENGTH, output_type="np", switch="hybridstitch-30", callback=seen.append)
    frames = out.images[0]
    assert frames.shape == (9, 32, 48, 3) and np.isfinite(frames).all()
    stages = [r.stage for r in out.trace]
    assert stages[0] == 0 and 1 in stages  # large, then a hybrid stage (and the small one, as the preset says)
    assert all(r.large_tokens == 5 for r in out.trace if r.stage == 1)  # 30% of 18 video tokens

    strip = frame_strip(frames, count=4)
    assert strip.size == (4 * 48 + 3 * 2, 32)
    strip.save(tmp_path / "strip.png")
    hybrid = next(d for d in seen if d["indices"] is not None)
    masks = mask_strip(frames, (3, 2, 3), hybrid["indices"][0].tolist(), count=9)
    assert masks.size == (9 * 48 + 8 * 2, 32)

    pytest.importorskip("imageio_ffmpeg", reason="MP4 output needs imageio-ffmpeg (the `wan` extra)")
    import imageio.v3 as iio

    path = save_video(frames, tmp_path / "video.mp4", fps=8)
    back = iio.imread(path)
    assert back.shape[0] == 9 and back.shape[1:3] == (32, 48)


def test_mask_strip_dims_exactly_the_tokens_outside_the_mask():
    frames = np.ones((9, 8, 12, 3), dtype=np.float32)  # white video, 3 latent frames, grid 3 x 2 x 3
    assert [latent_frame(f, 9, 3) for f in range(9)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    picture = np.asarray(mask_strip(frames, (3, 2, 3), [0, 11], count=9, dim=0.0, gap=0))
    first = picture[:, :12]  # frame 0 -> latent frame 0: token 0 (row 0, column 0) is kept
    assert first[:4, :4].min() == 255 and first[4:, :].max() == 0 and first[:, 4:].max() == 0
    fifth = picture[:, 4 * 12:5 * 12]  # frame 4 -> latent frame 1: token 11 = (1, 1, 2)
    assert fifth[4:, 8:].min() == 255 and fifth[:4, :].max() == 0
