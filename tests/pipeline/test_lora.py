"""LoRA on both models of a stitched FLUX pair (stitchkit.pipeline.lora), against diffusers' FluxPipeline with
the same LoRA loaded by diffusers itself. The LoRA weights are built here: small random ``lora_A``/``lora_B``
matrices on every attention projection, in diffusers' keys."""

import pytest
import torch
from diffusers import FluxPipeline

from stitchkit import ConfigError, StitchPipeline
from stitchkit.families.flux.tiny_random import MAX_LENGTH, build_flux_tiny_random_pair, tiny_transformer

ARGS = dict(prompt=["a red circle"], height=64, width=96, num_inference_steps=4, guidance_scale=3.5,
            max_sequence_length=MAX_LENGTH, output_type="latent")
HYBRID = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
PROJECTIONS = ("to_q", "to_k", "to_v")
TOL = 1e-5


def lora_weights(model, seed, rank=2, blocks=None):
    """``transformer.<module>.lora_A/B.weight`` for every attention projection of ``model`` (of ``blocks``
    only, when given), random and small: a LoRA of the model's widths."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.rsplit(".", 1)[-1] not in PROJECTIONS:
            continue
        if blocks is not None and not name.startswith(blocks):
            continue
        weights[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.3
        weights[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.3
    return weights


def generate(pipe, switch, **kwargs):
    return pipe(**ARGS, **kwargs, generator=torch.Generator().manual_seed(0), switch=switch).images


def reference(large_weights, small_weights, small=None):
    """diffusers' own pipelines on a fresh copy of the pair, each with its LoRA loaded by diffusers."""
    large, small_tf = build_flux_tiny_random_pair(seed=0)
    small_tf = small if small is not None else small_tf
    large.load_lora_weights(dict(large_weights), adapter_name="style")
    small_pipe = FluxPipeline(**{**large.components, "transformer": small_tf})
    small_pipe.set_progress_bar_config(disable=True)
    small_pipe.transformer.load_lora_adapter(dict(small_weights), prefix="transformer", adapter_name="style")
    return large, small_pipe


@pytest.fixture(scope="module")
def styled():
    """A tiny FLUX pair with a LoRA "style" in each model (one built for each model's widths)."""
    torch.set_num_threads(1)
    large, small = build_flux_tiny_random_pair(seed=0)
    pipe = StitchPipeline.from_pipelines(large=large, small=small)
    plain = {s: generate(pipe, s) for s in ("large", "small")}
    plain["hybrid"] = generate(pipe, HYBRID)
    weights = {"large": lora_weights(large.transformer, 1), "small": lora_weights(small, 2)}
    assert pipe.load_lora_weights(weights["large"], adapter_name="style", into="large") == "style"
    assert pipe.load_lora_weights(weights["small"], adapter_name="style", into="small") == "style"
    return pipe, plain, weights


def test_the_lora_reaches_the_small_models_steps_as_diffusers_applies_it(styled):
    pipe, plain, weights = styled
    ref_large, ref_small = reference(weights["large"], weights["small"])
    small = generate(pipe, "small")
    assert (small - ref_small(**ARGS, generator=torch.Generator().manual_seed(0)).images).abs().max() <= TOL
    assert (small - plain["small"]).abs().max() > 1e-3  # the small model's steps changed
    large = generate(pipe, "large")
    assert (large - ref_large(**ARGS, generator=torch.Generator().manual_seed(0)).images).abs().max() <= TOL
    assert (large - plain["large"]).abs().max() > 1e-3
    assert (generate(pipe, HYBRID) - plain["hybrid"]).abs().max() > 1e-3


def test_one_scale_reaches_both_models(styled):
    pipe, plain, weights = styled
    _, ref_small = reference(weights["large"], weights["small"])
    half = generate(pipe, "small", joint_attention_kwargs={"scale": 0.5})
    expected = ref_small(**ARGS, generator=torch.Generator().manual_seed(0), joint_attention_kwargs={"scale": 0.5})
    assert (half - expected.images).abs().max() <= TOL
    try:
        pipe.set_adapters("style", 0.0)  # off in both models
        assert (generate(pipe, "small") - plain["small"]).abs().max() <= TOL
        assert (generate(pipe, "large") - plain["large"]).abs().max() <= TOL
        assert (generate(pipe, HYBRID) - plain["hybrid"]).abs().max() <= TOL
    finally:
        pipe.set_adapters("style", 1.0)
    assert (generate(pipe, "small") - plain["small"]).abs().max() > 1e-3


def test_one_lora_into_both_models_of_one_width():
    """FLUX.1-dev and Flux.1 Lite share their width: one LoRA (here on the blocks both have) fits both."""
    torch.set_num_threads(1)
    large, _ = build_flux_tiny_random_pair(seed=0)
    lite = tiny_transformer(num_layers=1, num_single_layers=1, heads=4, seed=9)  # the large model's width
    pipe = StitchPipeline.from_pipelines(large=large, small=lite)
    plain_small = generate(pipe, "small")
    weights = lora_weights(large.transformer, 3, blocks=("transformer_blocks.0.", "single_transformer_blocks.0."))
    pipe.load_lora_weights(weights, adapter_name="style")  # into both
    assert "style" in pipe.transformer.peft_config and "style" in pipe.small_transformer.peft_config
    lite_ref = tiny_transformer(num_layers=1, num_single_layers=1, heads=4, seed=9)
    _, ref_small = reference(weights, weights, small=lite_ref)
    small = generate(pipe, "small")
    assert (small - ref_small(**ARGS, generator=torch.Generator().manual_seed(0)).images).abs().max() <= TOL
    assert (small - plain_small).abs().max() > 1e-3
    pipe.unload_lora_weights()
    assert not getattr(pipe.small_transformer, "peft_config", None)
    assert (generate(pipe, "small") - plain_small).abs().max() <= TOL


def test_lora_errors_are_one_line():
    large, small = build_flux_tiny_random_pair(seed=0)
    pipe = StitchPipeline.from_pipelines(large=large, small=small)
    with pytest.raises(ConfigError, match=r"^into: 'mid' is not a model of the pair; allowed: large, small, both"):
        pipe.load_lora_weights({}, into="mid")
    with pytest.raises(ConfigError, match=r"^lora: does not fit the small transformer .*into='small'"):
        pipe.load_lora_weights(lora_weights(large.transformer, 1), adapter_name="style")  # the small is narrower
    assert not getattr(pipe.transformer, "peft_config", None)  # nothing half-loaded
    with pytest.raises(ConfigError, match=r"^adapter_names: 'other' is not loaded"):
        pipe.set_adapters("other", 1.0)
