"""StitchPipeline against diffusers' own StableDiffusion3Pipeline: the anchor of correctness."""

import copy

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from stitchkit import ConfigError, NonFiniteError, StitchPipeline

ARGS = dict(prompt=["a red circle", "a blue square"], height=128, width=128, num_inference_steps=6,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent")
N_TOKENS = (128 // 8 // 2) ** 2  # VAE factor 8, patch 2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _processors(model):
    return dict(model.attn_processors)


def test_large_switch_equals_the_large_pipeline(tiny_pair, stitch_pipe):
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen()).images
    out = stitch_pipe(**ARGS, generator=_gen(), switch="large")
    assert (out.images - expected).abs().max() <= 1e-5
    assert [r.stage for r in out.trace] == [0] * 6
    assert all(r.large_tokens == N_TOKENS and r.small_tokens == 0 and r.mask_ratio == 1.0 for r in out.trace)


def test_small_switch_equals_a_pipeline_on_the_small_transformer(tiny_pair, stitch_pipe):
    large, small = tiny_pair
    small_pipe = StableDiffusion3Pipeline(**{**large.components, "transformer": small})
    small_pipe.set_progress_bar_config(disable=True)
    expected = small_pipe(**ARGS, generator=_gen(1)).images
    out = stitch_pipe(**ARGS, generator=_gen(1), switch="small")
    assert (out.images - expected).abs().max() <= 1e-5
    assert all(r.large_tokens == 0 and r.small_tokens == N_TOKENS for r in out.trace)


def test_hybrid_stage_with_full_mask_reproduces_the_large_model(tiny_pair, stitch_pipe):
    """Stage 0 records the K/V cache, every later step is a masked forward over all tokens: exact."""
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen(2)).images
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    out = stitch_pipe(**ARGS, generator=_gen(2), switch=switch, mask="full")
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1, 1]  # D_t first exists after step 1
    assert all(r.large_tokens == N_TOKENS for r in out.trace)
    assert (out.images - expected).abs().max() <= 1e-5


def test_hybrid_trace_counts_masked_tokens(stitch_pipe):
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    out = stitch_pipe(**ARGS, generator=_gen(3), switch=switch)
    k = int(0.3 * N_TOKENS + 0.5)
    hybrid = [r for r in out.trace if r.stage == 1]
    assert hybrid and all(r.large_tokens == k and r.small_tokens == N_TOKENS for r in hybrid)
    assert all(r.mask_ratio == pytest.approx(k / N_TOKENS) for r in hybrid)
    assert out.trace[0].change is None and all(r.change is not None for r in out.trace[1:])


def test_t_stitch_trace_follows_its_rule(stitch_pipe):
    out = stitch_pipe(**ARGS, generator=_gen(), switch={"kind": "t-stitch", "small_fraction": 0.5})
    assert [r.stage for r in out.trace] == [0, 0, 0, 1, 1, 1]  # small while (i+1)/6 <= 0.5
    assert [r.large_tokens > 0 for r in out.trace] == [False] * 3 + [True] * 3


def test_caller_pipelines_are_left_as_they_were(tiny_pair, stitch_pipe):
    large, small = tiny_pair
    before_out = large(**ARGS, generator=_gen(4)).images
    processors = _processors(large.transformer)
    scheduler_state = copy.deepcopy(large.scheduler.__dict__.get("_step_index"))
    for switch in ("hybridstitch-30", "staticmask-30", "fulllarge-30", "srdiffusion"):
        # fulllarge-30 is an ablation that Eq. 7 refuses (it computes every token)
        stitch_pipe(**ARGS, generator=_gen(5), switch=switch, allow_unprofitable=switch.startswith("fulllarge"))
    after = _processors(large.transformer)
    assert all(after[k] is processors[k] for k in processors)
    assert large.scheduler.__dict__.get("_step_index") == scheduler_state
    assert torch.equal(large(**ARGS, generator=_gen(4)).images, before_out)


def test_non_finite_prediction_stops_at_once_naming_step_and_model(tiny_pair, stitch_pipe):
    _, small = tiny_pair
    handle = small.register_forward_hook(lambda module, args, out: (out[0] * float("nan"),))
    try:
        with pytest.raises(NonFiniteError, match=r"^step 0: the small model returned NaN or inf"):
            stitch_pipe(**ARGS, generator=_gen(), switch="small")
    finally:
        handle.remove()
    processors = _processors(tiny_pair[0].transformer)
    with pytest.raises(NonFiniteError, match="step 3: the large model"):
        stitch_pipe(**ARGS, generator=_gen(), switch={"kind": "t-stitch", "small_fraction": 0.5},
                    callback=lambda d: d["step"] == 2 and tiny_pair[0].transformer.register_forward_hook(
                        lambda m, a, o: (o[0] * float("inf"),)))
    tiny_pair[0].transformer._forward_hooks.clear()
    assert all(tiny_pair[0].transformer.attn_processors[k] is v for k, v in processors.items())


def test_mismatched_pair_names_the_field(tiny_pair):
    from stitchkit.families.sd3.tiny_random import tiny_transformer

    large, _ = tiny_pair
    other = tiny_transformer(num_layers=1, heads=2, seed=9, pooled_projection_dim=24)
    with pytest.raises(ConfigError, match=r"^small.config.pooled_projection_dim: is 24, the large model's is 32"):
        StitchPipeline.from_pipelines(large=large, small=other)


def test_bad_policy_arguments_are_config_errors(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^mask: unknown mask policy 'topk'; known: "):
        stitch_pipe(**ARGS, switch="hybridstitch-30", mask="topk")
    with pytest.raises(ConfigError, match=r"^switch.mask_ratios"):
        stitch_pipe(**ARGS, switch={"kind": "hybridstitch", "thresholds": [0.5, 0.3], "mask_ratios": [1.5]})


def test_from_pretrained_loads_saved_folders_offline(tiny_pair, tmp_path):
    large, small = tiny_pair
    large.save_pretrained(tmp_path / "large")
    small_pipe = StableDiffusion3Pipeline(**{**large.components, "transformer": small})
    small_pipe.save_pretrained(tmp_path / "small")
    pipe = StitchPipeline.from_pretrained(str(tmp_path / "large"), str(tmp_path / "small"),
                                          torch_dtype=torch.float32, local_files_only=True,
                                          text_encoder_3=None, tokenizer_3=None)
    pipe.adapter.pipeline.set_progress_bar_config(disable=True)
    expected = large(**ARGS, generator=_gen(6)).images
    out = pipe(**ARGS, generator=_gen(6), switch="large")
    assert (out.images - expected).abs().max() <= 1e-5
    assert pipe.small.config.num_layers == small.config.num_layers


def test_full_large_context_counts_every_token_it_computes(stitch_pipe):
    """FullLarge runs the large model on all N tokens: the trace must say so (it is the ablation's cost)."""
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    out = stitch_pipe(**ARGS, generator=_gen(3), switch=switch, context="full-large", allow_unprofitable=True)
    hybrid = [r for r in out.trace if r.stage == 1]
    assert hybrid and all(r.large_tokens == N_TOKENS and r.small_tokens == N_TOKENS for r in hybrid)


def test_hybrid_steps_hand_the_small_models_own_x0_to_the_change_measure(stitch_pipe):
    """Outside the mask the stitched prediction is the small model's, so there small_x0 equals x0; inside it
    the large model's replaced it."""
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.2]}
    seen = []
    stitch_pipe(**ARGS, generator=_gen(6), switch=switch, allow_unprofitable=True,
                callback=lambda s: seen.append((s["tensors"], s["indices"])))
    hybrid = [(t, idx) for t, idx in seen if idx is not None]
    assert hybrid and all(t.small_x0 is None for t, idx in seen if idx is None)
    for tensors, indices in hybrid:
        diff = (tensors.small_x0 - tensors.x0).abs().mean(dim=1)  # (B, H, W)
        per_token = torch.nn.functional.avg_pool2d(diff[:, None], 2).flatten(1)
        inside = torch.zeros_like(per_token, dtype=torch.bool).scatter_(1, indices, True)
        assert per_token[~inside].max() <= 1e-6 and per_token[inside].min() > 1e-6
