"""The shapes pair runs through the same engine seam as SD3: equal to its own plain sampler."""

import pytest
import torch

from stitchkit import ConfigError, StitchPipeline
from stitchkit.families.shapes.adapter import ShapesAdapter

PROMPTS = ["a small red circle at the top left on a blue background",
           "a large blue square at the center on a white background"]


@pytest.fixture(scope="module")
def random_shapes():
    """A shapes pair with seeded random weights (the engine's behaviour, not the shipped weights')."""
    from stitchkit.shapes.pair import build_pair

    pair = build_pair(seed=0)
    return pair, StitchPipeline(ShapesAdapter(pair), pair.small, pair_id="shapes-random")


@pytest.mark.parametrize("which", ["large", "small"])
def test_single_model_switches_equal_the_plain_sampler(random_shapes, which):
    from stitchkit.shapes.sampling import initial_noise, sample

    pair, pipe = random_shapes
    expected = sample(pair, which, PROMPTS, seed=0, steps=6, guidance=3.0)
    out = pipe(PROMPTS, num_inference_steps=6, guidance_scale=3.0, latents=initial_noise(pair, 2, 0),
               output_type="latent", switch=which)
    assert (out.images.clamp(-1, 1) - expected).abs().max() <= 1e-5


def test_hybrid_full_mask_reproduces_the_large_model(random_shapes):
    pair, pipe = random_shapes
    args = dict(num_inference_steps=6, guidance_scale=3.0, output_type="latent")
    large = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), switch="large", **args).images
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.2]}
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), switch=switch, mask="full", **args)
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1, 1]
    assert (out.images - large).abs().max() <= 1e-5


def test_sd3_only_arguments_are_refused(random_shapes):
    _, pipe = random_shapes
    with pytest.raises(ConfigError, match="^prompt_2: is not used by the shapes pair"):
        pipe(PROMPTS, prompt_2="x", num_inference_steps=2)


def test_shipped_pair_loads_by_name_and_from_its_folder():
    from stitchkit.pipeline.pairs import load_pair_pipeline
    from stitchkit.shapes.pair import DEFAULT_PATH

    by_name = load_pair_pipeline("shapes")
    by_folder = StitchPipeline.from_pretrained(str(DEFAULT_PATH), str(DEFAULT_PATH))
    args = dict(num_inference_steps=4, guidance_scale=3.0, output_type="latent", switch="hybridstitch-30")
    a = by_name(PROMPTS[:1], generator=torch.Generator().manual_seed(0), **args)
    b = by_folder(PROMPTS[:1], generator=torch.Generator().manual_seed(0), **args)
    assert torch.equal(a.images, b.images) and by_name.adapter.family == "shapes"
