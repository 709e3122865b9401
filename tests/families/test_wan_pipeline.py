"""StitchPipeline on the Wan family against diffusers' own WanPipeline (tiny random, float32, CPU)."""

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from stitchkit import ConfigError, StitchPipeline
from stitchkit.families.wan.tiny_random import MAX_LENGTH, build_wan_tiny_random_pair

ARGS = dict(prompt=["a red circle", "a blue square"], height=32, width=48, num_frames=9, num_inference_steps=5,
            guidance_scale=5.0, max_sequence_length=MAX_LENGTH, output_type="latent")
N_TOKENS = 3 * (32 // 8 // 2) * (48 // 8 // 2)  # 9 frames -> 3 latent frames; VAE 8, patch 1x2x2: 18 tokens
HYBRID = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def wan_pair():
    torch.set_num_threads(1)
    return build_wan_tiny_random_pair(seed=0)


@pytest.fixture(scope="module")
def wan_pipe(wan_pair):
    large, small = wan_pair
    return StitchPipeline.from_pipelines(large=large, small=small)


def test_the_family_is_picked_from_the_pipeline(wan_pipe):
    assert wan_pipe.family.name == "wan" and wan_pipe.adapter.family == "wan"
    assert type(wan_pipe.masked_large).__name__ == "WanMaskedTransformer"


def test_large_switch_equals_the_large_pipeline(wan_pair, wan_pipe):
    large, _ = wan_pair
    expected = large(**ARGS, generator=_gen()).frames
    out = wan_pipe(**ARGS, generator=_gen(), switch="large")
    assert out.images.shape == expected.shape == (2, 16, 3, 4, 6)
    assert (out.images - expected).abs().max() <= 1e-5
    assert [r.stage for r in out.trace] == [0] * 5
    assert all(r.large_tokens == N_TOKENS and r.small_tokens == 0 for r in out.trace)


def test_large_switch_decodes_the_frames_the_large_pipeline_decodes(wan_pair, wan_pipe):
    large, _ = wan_pair
    args = {**ARGS, "output_type": "np", "num_inference_steps": 3}
    expected = large(**args, generator=_gen(7)).frames
    out = wan_pipe(**args, generator=_gen(7), switch="large")
    assert out.images.shape == expected.shape == (2, 9, 32, 48, 3)
    assert np.abs(out.images - expected).max() <= 1e-5


def test_small_switch_equals_a_pipeline_on_the_small_transformer(wan_pair, wan_pipe):
    large, small = wan_pair
    small_pipe = WanPipeline(**{**large.components, "transformer": small})
    small_pipe.set_progress_bar_config(disable=True)
    expected = small_pipe(**ARGS, generator=_gen(1)).frames
    out = wan_pipe(**ARGS, generator=_gen(1), switch="small")
    assert (out.images - expected).abs().max() <= 1e-5
    assert all(r.large_tokens == 0 and r.small_tokens == N_TOKENS for r in out.trace)


def test_hybrid_stage_with_full_mask_reproduces_the_large_model(wan_pair, wan_pipe):
    """Stage 0 records the K/V cache, every later step is a masked forward over all video tokens: exact."""
    large, _ = wan_pair
    expected = large(**ARGS, generator=_gen(2)).frames
    out = wan_pipe(**ARGS, generator=_gen(2), switch=HYBRID, mask="full")
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1]  # D_t first exists after step 1
    assert all(r.large_tokens == N_TOKENS for r in out.trace)
    assert (out.images - expected).abs().max() <= 1e-5


def test_hybrid_steps_mask_video_tokens_and_measure_change_over_all_of_them(wan_pipe):
    seen = []
    out = wan_pipe(**ARGS, generator=_gen(3), switch=HYBRID, callback=seen.append)
    k = int(0.3 * N_TOKENS + 0.5)
    hybrid = [r for r in out.trace if r.stage == 1]
    assert hybrid and all(r.large_tokens == k and r.small_tokens == N_TOKENS for r in hybrid)
    assert out.trace[0].change is None and all(r.change is not None for r in out.trace[1:])
    # The change map has one entry per (frame, row, column) token, and D_t (Eq. 9-10) is over all of them.
    last = seen[-1]
    assert last["change_map"].shape == (2, N_TOKENS)
    x0, previous_x0 = last["x0"], seen[-2]["x0"]
    by_hand = (x0 - previous_x0).abs().flatten(1).mean(1) / x0.abs().flatten(1).mean(1)  # Eq. 9, per sample
    assert float(by_hand.max()) == pytest.approx(out.trace[-1].change, rel=1e-5)
    indices = [d["indices"] for d in seen if d["indices"] is not None]
    assert indices and all(i.shape == (2, k) and int(i.max()) < N_TOKENS for i in indices)


def test_policies_run_unchanged_on_video(wan_pipe):
    for switch in ("hybridstitch-30", "staticmask-30", "fulllarge-30", "srdiffusion", "t-stitch"):
        out = wan_pipe(**ARGS, generator=_gen(4), switch=switch, allow_unprofitable=True)
        assert len(out.trace) == 5 and torch.isfinite(out.images).all(), switch


def test_caller_pipeline_and_model_are_left_as_they_were(wan_pair, wan_pipe):
    large, _ = wan_pair
    before = large(**ARGS, generator=_gen(5)).frames
    processors = dict(large.transformer.attn_processors)
    state = {k: v.clone() for k, v in large.transformer.state_dict().items()}
    for switch in ("hybridstitch-30", "fulllarge-30"):
        wan_pipe(**ARGS, generator=_gen(6), switch=switch, allow_unprofitable=True)  # FullLarge breaks Eq. 7
    assert all(large.transformer.attn_processors[k] is v for k, v in processors.items())
    assert all(torch.equal(state[k], v) for k, v in large.transformer.state_dict().items())
    assert torch.equal(large(**ARGS, generator=_gen(5)).frames, before)
    assert not wan_pipe.masked_large.has_cache


def test_bad_video_arguments_are_config_errors(wan_pipe, wan_pair):
    with pytest.raises(ConfigError, match=r"^num_frames: 8 is not 1 more than a multiple of 4"):
        wan_pipe(**{**ARGS, "num_frames": 8})
    with pytest.raises(ConfigError, match=r"^height: 40 is not a multiple of 16"):
        wan_pipe(**{**ARGS, "height": 40})
    with pytest.raises(ConfigError, match=r"^prompt_2: is not used by Wan pipelines"):
        wan_pipe(**ARGS, prompt_2="x")
    from stitchkit.families.wan.tiny_random import tiny_transformer

    other = tiny_transformer(num_layers=1, heads=2, seed=9, text_dim=24)
    with pytest.raises(ConfigError, match=r"^small.config.text_dim: is 24, the large model's is 32"):
        StitchPipeline.from_pipelines(large=wan_pair[0], small=other)


def test_image_families_refuse_frames(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^num_frames: this family makes images"):
        stitch_pipe(prompt="x", height=128, width=128, num_inference_steps=2, num_frames=9, output_type="latent")


def test_from_pretrained_picks_the_family_from_saved_folders_offline(wan_pair, tmp_path):
    pytest.importorskip("accelerate", reason="diffusers loads a WanTransformer3DModel only with accelerate")
    large, small = wan_pair
    large.save_pretrained(tmp_path / "large")
    WanPipeline(**{**large.components, "transformer": small}).save_pretrained(tmp_path / "small")
    pipe = StitchPipeline.from_pretrained(str(tmp_path / "large"), str(tmp_path / "small"),
                                          torch_dtype=torch.float32, local_files_only=True)
    pipe.adapter.pipeline.set_progress_bar_config(disable=True)
    assert pipe.family.name == "wan"
    expected = large(**ARGS, generator=_gen(6)).frames
    out = pipe(**ARGS, generator=_gen(6), switch="large")
    assert (out.images - expected).abs().max() <= 1e-5
    assert pipe.small.config.num_layers == small.config.num_layers
