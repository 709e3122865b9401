"""The pipeline face as a diffusers user meets it: components as attributes under diffusers' names, the
callback tensors on the class, a registered pair loaded by name (and by its older name)."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from stitchkit import StitchPipeline


def test_components_are_attributes_under_diffusers_names(tiny_pair, stitch_pipe):
    large, small = tiny_pair
    assert stitch_pipe.transformer is large.transformer
    assert stitch_pipe.small_transformer is small
    for name in ("vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_3"):
        assert getattr(stitch_pipe, name) is getattr(large, name), name
    assert set(stitch_pipe.components) == set(large.components) | {"small_transformer"}
    with pytest.raises(AttributeError, match="no attribute 'unet'"):
        stitch_pipe.unet  # noqa: B018 - a name no component has


def test_callback_tensor_inputs_sit_on_the_class_as_in_diffusers():
    assert StitchPipeline._callback_tensor_inputs == StableDiffusion3Pipeline._callback_tensor_inputs


def test_from_pair_loads_a_registered_pair_and_the_old_name_is_an_alias():
    from stitchkit.pairs import load_pair_pipeline
    from stitchkit.registry import get_registry

    registry = get_registry(entry_points=False)
    pipe = StitchPipeline.from_pair("tiny-random", registry=registry)
    assert pipe.pair_id == "tiny-random" and pipe.registry is registry
    again = load_pair_pipeline("tiny-random", registry=registry)
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=3, max_sequence_length=8,
                output_type="latent", switch="hybridstitch-30", allow_unprofitable=True)
    a = pipe(**args, generator=torch.Generator().manual_seed(0)).images
    b = again(**args, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(a, b)


def test_from_pair_refuses_an_unknown_name_naming_the_known_ones():
    from stitchkit.errors import ConfigError
    from stitchkit.registry import get_registry

    with pytest.raises(ConfigError, match="tiny-random"):
        StitchPipeline.from_pair("no-such-pair", registry=get_registry(entry_points=False))
