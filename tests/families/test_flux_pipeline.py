"""StitchPipeline on the FLUX family against diffusers' own FluxPipeline (tiny random, float32, CPU)."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from stitchkit import ConfigError, StitchPipeline
from stitchkit.families.flux.tiny_random import MAX_LENGTH, build_flux_tiny_random_pair

ARGS = dict(prompt=["a red circle", "a blue square"], height=64, width=96, num_inference_steps=5,
            guidance_scale=3.5, max_sequence_length=MAX_LENGTH, output_type="latent")
N_TOKENS = (64 // 16) * (96 // 16)  # VAE 8, packing 2x2: 4 x 6 = 24 tokens
HYBRID = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
TOL = 1e-5


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def flux_pair():
    torch.set_num_threads(1)
    return build_flux_tiny_random_pair(seed=0)


@pytest.fixture(scope="module")
def flux_pipe(flux_pair):
    large, small = flux_pair
    return StitchPipeline.from_pipelines(large=large, small=small)


@pytest.fixture(scope="module")
def small_pipe(flux_pair):
    large, small = flux_pair
    pipe = FluxPipeline(**{**large.components, "transformer": small})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_family_is_picked_from_the_pipeline(flux_pipe):
    assert flux_pipe.family.name == "flux" and flux_pipe.adapter.family == "flux"
    assert type(flux_pipe.masked_large).__name__ == "FluxMaskedTransformer"


def test_large_switch_equals_the_large_pipeline(flux_pair, flux_pipe):
    large, _ = flux_pair
    expected = large(**ARGS, generator=_gen()).images
    out = flux_pipe(**ARGS, generator=_gen(), switch="large")
    assert out.images.shape == expected.shape == (2, N_TOKENS, 64)  # FluxPipeline's packed latents
    assert (out.images - expected).abs().max() <= TOL
    assert [r.stage for r in out.trace] == [0] * 5
    assert all(r.large_tokens == N_TOKENS and r.small_tokens == 0 for r in out.trace)


def test_large_switch_decodes_the_images_the_large_pipeline_decodes(flux_pair, flux_pipe):
    large, _ = flux_pair
    args = {**ARGS, "output_type": "np", "num_inference_steps": 3}
    expected = large(**args, generator=_gen(7)).images
    out = flux_pipe(**args, generator=_gen(7), switch="large")
    assert out.images.shape == expected.shape == (2, 64, 96, 3)
    assert np.abs(out.images - expected).max() <= TOL


def test_small_switch_equals_a_pipeline_on_the_small_transformer(flux_pipe, small_pipe):
    expected = small_pipe(**ARGS, generator=_gen(1)).images
    out = flux_pipe(**ARGS, generator=_gen(1), switch="small")
    assert (out.images - expected).abs().max() <= TOL
    assert all(r.large_tokens == 0 and r.small_tokens == N_TOKENS for r in out.trace)


def test_the_distilled_guidance_reaches_the_transformer(flux_pipe):
    """guidance_scale is FLUX.1-dev's embedded guidance: one pass per step, and it changes the result."""
    a = flux_pipe(**ARGS, generator=_gen(8), switch="large")
    b = flux_pipe(**{**ARGS, "guidance_scale": 1.0}, generator=_gen(8), switch="large")
    assert (a.images - b.images).abs().max() > 1e-3
    assert all(call.tokens == N_TOKENS for step in a.steps for call in step.calls)


def test_true_cfg_equals_the_large_pipeline(flux_pair, flux_pipe):
    """true_cfg_scale with a negative prompt: FluxPipeline runs two passes, stitchkit one batch of both
    halves; they agree to float rounding."""
    large, _ = flux_pair
    args = {**ARGS, "negative_prompt": ["blurry", "dark"], "true_cfg_scale": 4.0}
    expected = large(**args, generator=_gen(9)).images
    out = flux_pipe(**args, generator=_gen(9), switch="large")
    assert (out.images - expected).abs().max() <= TOL
    plain = flux_pipe(**ARGS, generator=_gen(9), switch="large")
    assert (out.images - plain.images).abs().max() > 1e-3  # CFG did something


def test_hybrid_stage_with_full_mask_reproduces_the_large_model(flux_pair, flux_pipe):
    """Stage 0 records the K/V cache, every later step is a masked forward over all image tokens: exact."""
    large, _ = flux_pair
    expected = large(**ARGS, generator=_gen(2)).images
    out = flux_pipe(**ARGS, generator=_gen(2), switch=HYBRID, mask="full", allow_unprofitable=True)
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1]  # D_t first exists after step 1
    assert all(r.large_tokens == N_TOKENS for r in out.trace)
    assert (out.images - expected).abs().max() <= TOL


def test_a_30_percent_hybrid_computes_30_percent_of_the_tokens_on_the_large_model(flux_pair, flux_pipe, small_pipe):
    large, _ = flux_pair
    seen = []
    out = flux_pipe(**ARGS, generator=_gen(3), switch=HYBRID, callback=seen.append, allow_unprofitable=True)
    k = int(0.3 * N_TOKENS + 0.5)
    hybrid = [r for r in out.trace if r.stage == 1]
    assert hybrid and all(r.large_tokens == k and r.small_tokens == N_TOKENS for r in hybrid)
    indices = [d["indices"] for d in seen if d["indices"] is not None]
    assert indices and all(i.shape == (2, k) and int(i.max()) < N_TOKENS for i in indices)
    for reference in (large(**ARGS, generator=_gen(3)).images, small_pipe(**ARGS, generator=_gen(3)).images):
        assert (out.images - reference).abs().max() > 1e-3


def test_policies_run_unchanged_on_flux(flux_pipe):
    for switch in ("hybridstitch-30", "staticmask-30", "fulllarge-30", "srdiffusion", "t-stitch"):
        out = flux_pipe(**ARGS, generator=_gen(4), switch=switch, allow_unprofitable=True)
        assert len(out.trace) == 5 and torch.isfinite(out.images).all(), switch


def test_caller_pipeline_and_model_are_left_as_they_were(flux_pair, flux_pipe):
    large, _ = flux_pair
    before = large(**ARGS, generator=_gen(5)).images
    processors = dict(large.transformer.attn_processors)
    for switch in ("hybridstitch-30", "fulllarge-30"):
        flux_pipe(**ARGS, generator=_gen(6), switch=switch, allow_unprofitable=True)
    assert all(large.transformer.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(large(**ARGS, generator=_gen(5)).images, before)
    assert not flux_pipe.masked_large.has_cache


def test_bad_arguments_are_config_errors(flux_pipe, flux_pair):
    with pytest.raises(ConfigError, match=r"^height: 40 is not a multiple of 16"):
        flux_pipe(**{**ARGS, "height": 40})
    with pytest.raises(ConfigError, match=r"^prompt_3: is not used by FLUX pipelines"):
        flux_pipe(**ARGS, prompt_3="x")
    from stitchkit.families.flux.tiny_random import tiny_transformer

    other = tiny_transformer(num_layers=1, num_single_layers=1, heads=2, seed=9, joint_attention_dim=24)
    with pytest.raises(ConfigError, match=r"^small.config.joint_attention_dim: is 24, the large model's is 32"):
        StitchPipeline.from_pipelines(large=flux_pair[0], small=other)


def test_other_families_refuse_true_cfg_scale(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^true_cfg_scale: is not used by the sd3 family"):
        stitch_pipe(prompt="x", height=128, width=128, num_inference_steps=2, true_cfg_scale=4.0,
                    output_type="latent")


def test_paper_random_pair_refuses_a_cpu():
    from stitchkit.families.flux.paper_random import build_flux_paper_random_pair

    with pytest.raises(ConfigError, match=r"^pair: flux-paper-random needs a CUDA device"):
        build_flux_paper_random_pair(device="cpu")


def test_flop_model_counts_the_selected_tokens(flux_pair):
    from stitchkit.families.flux.flops import flux_transformer_flops

    config = flux_pair[0].transformer.config
    full = flux_transformer_flops(config, 1024, 512)
    assert flux_transformer_flops(config, 1024, 512, mask_ratio=1.0) == full
    part = [flux_transformer_flops(config, 1024, 512, mask_ratio=r) / full for r in (0.1, 0.3, 0.5)]
    assert part == sorted(part) and part[0] > 512 / (1024 + 512)  # the text tokens are always computed


def test_from_pretrained_picks_the_family_from_saved_folders_offline(flux_pair, small_pipe, tmp_path):
    pytest.importorskip("accelerate", reason="diffusers loads a FluxTransformer2DModel only with accelerate")
    large, _ = flux_pair
    large.save_pretrained(tmp_path / "large")
    small_pipe.save_pretrained(tmp_path / "small")
    pipe = StitchPipeline.from_pretrained(str(tmp_path / "large"), str(tmp_path / "small"),
                                          torch_dtype=torch.float32, local_files_only=True)
    pipe.adapter.pipeline.set_progress_bar_config(disable=True)
    assert pipe.family.name == "flux"
    expected = large(**ARGS, generator=_gen(6)).images
    out = pipe(**ARGS, generator=_gen(6), switch="large")
    assert (out.images - expected).abs().max() <= TOL
    assert pipe.small.config.num_layers == 1
