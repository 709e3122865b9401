"""Video pairs through the experiment runner (`stitchkit run`): sampler.num_frames, MP4 + frame strip per
unit, the strip as the unit's picture (grid, metrics, resume), masks on strips, profiles keyed by frames."""

import csv
import json

import numpy as np
import pytest
import torch

from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.families.wan.tiny_random import MAX_LENGTH

HEIGHT, WIDTH, FRAMES = 32, 48, 9
#: 9 frames -> 3 latent frames; 32 x 48 px -> 4 x 6 latents -> 2 x 3 tokens per frame (patch 1x2x2).
TOKENS = 3 * 2 * 3
SAMPLER = {"steps": 4, "guidance_scale": 5.0, "height": HEIGHT, "width": WIDTH, "num_frames": FRAMES,
           "max_sequence_length": MAX_LENGTH}
#: HybridStitch with thresholds the tiny pair's D_t crosses within 4 steps: large, hybrid (30 %), small.
HYBRID = {"kind": "hybridstitch", "thresholds": [0.9, 0.01], "mask_ratios": [0.3]}

YAML = f"""\
name: wan-smoke
pair: wan-tiny-random
sampler: {json.dumps(SAMPLER)}
prompts: [a red circle]
seeds: [0]
methods:
  - large
  - {{name: hs, switch: {json.dumps(HYBRID)}}}
output: run
"""


@pytest.fixture(scope="module")
def wan_pipe():
    from stitchkit.pipeline.pairs import load_pair_pipeline

    return load_pair_pipeline("wan-tiny-random")


def test_a_wan_experiment_writes_videos_and_strips_and_resumes(tmp_path, monkeypatch, capsys, wan_pipe):
    iio = pytest.importorskip("imageio.v3", reason="MP4 output needs imageio + imageio-ffmpeg (the `wan` extra)")
    pytest.importorskip("imageio_ffmpeg", reason="MP4 output needs imageio-ffmpeg (the `wan` extra)")
    from PIL import Image

    from stitchkit.cli import main
    from stitchkit.experiments import runner
    from stitchkit.pipeline.video import STRIP_FRAMES, STRIP_GAP, chosen_frames

    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "wan.yaml").write_text(YAML)
    assert main(["run", str(tmp_path / "wan.yaml"), "--threads", "1"]) == 0
    out = tmp_path / "run"
    picked = chosen_frames(FRAMES, STRIP_FRAMES)
    for method, switch in (("large", "large"), ("hs", HYBRID)):
        video = iio.imread(out / "videos" / method / "p0000-s0.mp4")
        assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
        strip = np.asarray(Image.open(out / "images" / method / "p0000-s0.png").convert("RGB"))
        assert strip.shape == (HEIGHT, len(picked) * WIDTH + (len(picked) - 1) * STRIP_GAP, 3)
        # The strip is the chosen frames of the very video the pipeline makes for this unit, called directly.
        frames = wan_pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np",
                          switch=switch, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4,
                          guidance_scale=5.0, max_sequence_length=MAX_LENGTH).images[0]
        for i, f in enumerate(picked):
            frame = strip[:, i * (WIDTH + STRIP_GAP):i * (WIDTH + STRIP_GAP) + WIDTH]
            np.testing.assert_array_equal(frame, (np.clip(frames[f], 0, 1) * 255).round().astype(np.uint8))
        record = json.loads((out / "records" / method / "p0000-s0.json").read_text())
        assert record["sampler"]["num_frames"] == FRAMES
        assert all(step["num_tokens"] == TOKENS for step in record["trace"])
    hybrid = json.loads((out / "records" / "hs" / "p0000-s0.json").read_text())
    assert hybrid["masks"]["grid"] == [3, 2, 3] and hybrid["masks"]["steps"]
    assert all(len(indices) == round(0.3 * TOKENS) for _, indices in hybrid["masks"]["steps"])
    rows = {row["method"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"large", "hs"} and all(row["images"] == "1" for row in rows.values())
    assert rows["large"]["sampler"] == f"4 steps {HEIGHT}x{WIDTH} {FRAMES} frames cfg 5"
    assert (out / "grid.png").exists() and (out / "masks.png").exists()
    resolved = (out / "config.resolved.yaml").read_text()
    assert f"num_frames: {FRAMES}" in resolved

    # A rerun finds every unit done: it loads no pair and generates nothing.
    def no_loading(config):
        raise AssertionError("a finished video run was generated again")

    monkeypatch.setattr(runner, "load_pair", no_loading)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "wan.yaml"), "--threads", "1"]) == 0
    monkeypatch.undo()
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "cache"))

    # A unit whose MP4 is gone is made again, and only that one.
    (out / "videos" / "hs" / "p0000-s0.mp4").unlink()
    kept = (out / "records" / "large" / "p0000-s0.json").stat().st_mtime_ns
    assert main(["run", str(tmp_path / "wan.yaml"), "--threads", "1"]) == 0
    assert (out / "videos" / "hs" / "p0000-s0.mp4").exists()
    assert (out / "records" / "large" / "p0000-s0.json").stat().st_mtime_ns == kept


def _config(tmp_path, pair: str, sampler: dict) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"pair": pair, "prompts": ["a red circle"], "methods": ["large"],
                                       "sampler": sampler, "output": "run"}, base=tmp_path)


@pytest.mark.parametrize("frames", [0, -4])
def test_num_frames_must_be_positive(tmp_path, frames):
    with pytest.raises(ConfigError, match=rf"^sampler\.num_frames: must be positive, got {frames}$"):
        _config(tmp_path, "wan-tiny-random", {**SAMPLER, "num_frames": frames})


def test_num_frames_off_the_vae_grid_is_refused_with_its_path_before_generating(tmp_path, wan_pipe):
    from stitchkit.experiments.runner import run_experiment

    config = _config(tmp_path, "wan-tiny-random", {**SAMPLER, "num_frames": 8})
    with pytest.raises(ConfigError, match=r"^sampler\.num_frames: 8 is not 1 more than a multiple of 4"):
        run_experiment(config, progress=False, pipe=wan_pipe)
    assert not (tmp_path / "run" / "records").exists() and not (tmp_path / "run" / "videos").exists()


def test_num_frames_on_an_image_pair_is_refused_with_its_path(tmp_path):
    from stitchkit.experiments.runner import run_experiment

    config = _config(tmp_path, "tiny-random", {"steps": 2, "height": 64, "width": 64, "num_frames": 9,
                                               "max_sequence_length": 8})
    with pytest.raises(ConfigError, match=r"^sampler\.num_frames: this pair makes images, not videos"):
        run_experiment(config, progress=False)
    assert not (tmp_path / "run" / "records").exists()


def test_an_image_run_resolves_without_num_frames(tmp_path):
    from stitchkit.experiments.resolved import resolved

    assert "num_frames" not in resolved(_config(tmp_path, "tiny-random", {"steps": 2}))["sampler"]


def test_profile_of_a_video_pair_is_keyed_by_frames_and_read_by_run(tmp_path, monkeypatch, capsys, wan_pipe):
    """`stitchkit profile --num-frames` asks the pair's adapter for the key and the inputs' shapes, so `run`
    at the same size and frames reads the profile instead of measuring again."""
    from stitchkit.cli import main
    from stitchkit.experiments import pair_setup
    from stitchkit.cost.profile import ProfileKey, profile_path

    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "cache"))
    assert main(["profile", "--pair", "wan-tiny-random", "--height", str(HEIGHT), "--width", str(WIDTH),
                 "--num-frames", str(FRAMES), "--ratios", "0.3", "--warmup", "0", "--repeats", "1",
                 "--threads", "1", "--max-sequence-length", str(MAX_LENGTH), "--allow-noisy", "--json"]) == 0
    key = json.loads(capsys.readouterr().out.splitlines()[-1])["key"]
    assert key["frames"] == FRAMES and key["text_tokens"] == MAX_LENGTH and key["height"] == HEIGHT
    assert profile_path(ProfileKey(**key)).name.startswith(f"wan-tiny-random-{HEIGHT}x{WIDTH}x{FRAMES}f-")

    def no_measuring(*args, **kwargs):
        raise AssertionError("run measured a profile: its key differs from the one `stitchkit profile` cached")

    monkeypatch.setattr(pair_setup, "profile_transformers", no_measuring)  # where run looks it up
    config = _config(tmp_path, "wan-tiny-random", SAMPLER)
    costs = pair_setup.ensure_profile(wan_pipe, config, pair_setup.run_size(wan_pipe, config))
    assert [r for r, _ in costs.masked_ms] == [0.3]
    # Another frame count is another key: not the cached profile.
    other = _config(tmp_path, "wan-tiny-random", {**SAMPLER, "num_frames": 5})
    with pytest.raises(AssertionError, match="run measured a profile"):
        pair_setup.ensure_profile(wan_pipe, other, pair_setup.run_size(wan_pipe, other))


def test_profile_refuses_frames_for_an_image_pair(capsys):
    from stitchkit.cli import main

    assert main(["profile", "--pair", "tiny-random", "--height", "64", "--width", "64", "--num-frames", "9"]) == 2
    assert capsys.readouterr().err.startswith("stitchkit profile: error: --num-frames: this pair makes images")


def test_an_image_profile_key_keeps_its_file_name_and_stored_key():
    from stitchkit.cost.profile import ProfileKey

    key = ProfileKey(pair="tiny-random", height=64, width=64, dtype="float32", device="cpu", threads=1)
    assert key.filename() == "tiny-random-64x64-float32-cpu-b2-t333-th1.json"
    assert "frames" not in key.to_dict()
    video = ProfileKey(pair="p", height=32, width=48, dtype="float32", device="cpu", frames=9)
    assert video.filename() == "p-32x48x9f-float32-cpu-b2-t333.json" and video.to_dict()["frames"] == 9


def test_profile_transformers_times_wan_transformers_on_video_latents(wan_pipe):
    """The Wan family's random inputs are video-shaped; the masked cost is timed on video tokens."""
    from stitchkit.cost.profile import profile_transformers

    costs = profile_transformers(wan_pipe.adapter.large_transformer, wan_pipe.small, latent_height=4,
                                 latent_width=6, latent_frames=3, text_tokens=MAX_LENGTH, batch=2,
                                 ratios=(0.3,), warmup=0, repeats=1, num_threads=1,
                                 family=wan_pipe.family)
    assert costs.source == "profile" and costs.large_ms > 0 and costs.small_ms > 0
    assert [r for r, _ in costs.masked_ms] == [0.3]
    with pytest.raises(ConfigError, match=r"^latent size: 3x5x6 is not divisible by the patch size 1x2x2"):
        profile_transformers(wan_pipe.adapter.large_transformer, wan_pipe.small, latent_height=5,
                             latent_width=6, latent_frames=3, text_tokens=MAX_LENGTH, warmup=0, repeats=1,
                             family=wan_pipe.family)


def test_a_mask_drawn_on_a_saved_strip_is_the_mask_drawn_on_the_frames():
    """masks.png draws on the unit's PNG strip (the frames are not kept): the same picture as drawing the
    mask on the video's own frames."""
    from stitchkit.pipeline.video import STRIP_FRAMES, frame_strip, mask_strip, strip_mask_view

    rng = np.random.default_rng(0)
    frames = rng.random((FRAMES, 8, 12, 3)).astype(np.float32)
    indices = [0, 4, 7, 11, 17]
    want = np.asarray(mask_strip(frames, (3, 2, 3), indices, count=STRIP_FRAMES))
    got = np.asarray(strip_mask_view(frame_strip(frames), num_frames=FRAMES, grid=(3, 2, 3), indices=indices))
    np.testing.assert_array_equal(got, want)


def test_the_wan_example_yaml_is_a_valid_video_experiment():
    from pathlib import Path

    from stitchkit.experiments.resolved import resolved

    path = Path(__file__).resolve().parents[2] / "examples" / "wan_t2v.yaml"
    config = ExperimentConfig.from_yaml(path)
    assert config.pair.large == "Wan-AI/Wan2.1-T2V-14B-Diffusers" and config.pair.dtype == "bfloat16"
    assert config.sampler.num_frames == 81 and (config.sampler.num_frames - 1) % 4 == 0
    assert resolved(config)["sampler"]["num_frames"] == 81
    assert "NOT RUNNABLE" not in path.read_text()


def test_the_readme_video_experiment_is_this_files_experiment():
    """The README's video YAML is valid and is the experiment the smoke run above runs."""
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Model families and video"):text.index("## Memory")]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    data = yaml.safe_load(block[:block.index("```")])
    config = ExperimentConfig.from_dict(data)
    assert config.pair.name == "wan-tiny-random" and config.sampler.num_frames == FRAMES
    assert data["sampler"] == SAMPLER and data["methods"][1]["switch"] == HYBRID


def test_calibration_generates_the_experiments_frames(tmp_path, wan_pipe):
    """`stitchkit calibrate` on a video experiment replays over its video tokens at sampler.num_frames."""
    from stitchkit.calibration.setup import prepare
    from stitchkit.cost.latency import Costs

    config = ExperimentConfig.from_dict({"pair": "wan-tiny-random", "prompts": ["a red circle"], "sampler": SAMPLER,
                                         "methods": ["large", {"name": "hs", "switch": HYBRID}], "output": "run"},
                                        base=tmp_path)
    costs = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.3, 5.0)], source="profile")
    problem, setup = prepare(config, "hs", units=1, pipe=wan_pipe, costs=costs)
    assert problem.num_tokens == TOKENS
    video = setup.generate(setup.units[0], "large", output_type="np").images[0]
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
