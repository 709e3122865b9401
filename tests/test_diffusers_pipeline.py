"""StitchPipeline is a diffusers DiffusionPipeline: built from components, saved to one folder and loaded back
from it, moved with ``.to(device, dtype)``, offloaded with diffusers' own hooks (which the masked forward and
its K/V cache follow), and running skip-layer guidance where it is defined. diffusers' own SD3 fast tests run
against it outside this repository (README "Saving, loading and offload")."""

import json

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

from stitchkit import ConfigError, StitchPipeline

HYBRID = dict(prompt="a cat", height=64, width=64, num_inference_steps=4, max_sequence_length=8,
              output_type="latent", switch={"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]},
              allow_unprofitable=True)  # threshold 1e9: hybrid once a D_t exists (step 2)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _stages(out):
    return [r.stage for r in out.trace]


def test_it_is_a_diffusion_pipeline_with_the_large_pipelines_components_plus_the_small_transformer(tiny_pair,
                                                                                                  stitch_pipe):
    large, small = tiny_pair
    assert isinstance(stitch_pipe, DiffusionPipeline)
    assert stitch_pipe.components == {**large.components, "small_transformer": small}
    assert stitch_pipe.config.family == "sd3" and stitch_pipe.config.pair_id == stitch_pipe.pair_id
    # diffusers' offload order, the small model right after the large one
    assert stitch_pipe.model_cpu_offload_seq == ("text_encoder->text_encoder_2->text_encoder_3->image_encoder->"
                                                 "transformer->small_transformer->vae")


def test_built_from_components_it_generates_what_from_pipelines_does(tiny_pair, stitch_pipe):
    large, small = tiny_pair
    cls = StitchPipeline.with_components_of(StableDiffusion3Pipeline)
    assert cls is StitchPipeline.with_components_of(StableDiffusion3Pipeline) and cls.__name__ == "StitchPipeline"
    built = cls(**large.components, small_transformer=small, pair_id=stitch_pipe.pair_id)
    assert built.transformer is large.transformer and built.small is small
    a = stitch_pipe(**HYBRID, generator=_gen(0))
    b = built(**HYBRID, generator=_gen(0))
    assert _stages(a) == [0, 0, 1, 1] and torch.equal(a.images, b.images)
    # from_pipelines on that class still wraps the caller's pipeline
    assert cls.from_pipelines(large=large, small=small).adapter.pipeline is large


def test_a_saved_pipeline_loads_from_one_folder_and_gives_the_same_hybrid_images(stitch_pipe, tmp_path):
    stitch_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "StitchPipeline" and index["family"] == "sd3"
    assert index["pair_id"] == stitch_pipe.pair_id
    assert index["large_pipeline"] == ["diffusers", "StableDiffusion3Pipeline"]
    assert index["small_transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert (tmp_path / "small_transformer" / "config.json").is_file()
    loaded = StitchPipeline.from_pretrained(str(tmp_path))
    assert isinstance(loaded, StitchPipeline) and loaded.pair_id == stitch_pipe.pair_id
    assert loaded.family.name == "sd3"
    for name, tensor in stitch_pipe.small.state_dict().items():
        assert torch.equal(loaded.small.state_dict()[name], tensor), name
    expected = stitch_pipe(**HYBRID, generator=_gen(1))
    out = loaded(**HYBRID, generator=_gen(1))
    assert _stages(out) == _stages(expected) == [0, 0, 1, 1]
    assert torch.equal(out.images, expected.images)


def test_loading_takes_diffusers_options_variant_and_per_component_dtype(stitch_pipe, tmp_path):
    stitch_pipe.save_pretrained(tmp_path, variant="v1")
    assert (tmp_path / "small_transformer" / "diffusion_pytorch_model.v1.safetensors").is_file()
    dtypes = {"transformer": torch.float64, "small_transformer": torch.float64, "default": torch.float32}
    loaded = StitchPipeline.from_pretrained(str(tmp_path), variant="v1", dtype=dtypes)
    assert loaded.small.dtype == loaded.transformer.dtype == torch.float64 and loaded.vae.dtype == torch.float32
    with pytest.raises(ValueError, match="variant=v2"):
        StitchPipeline.from_pretrained(str(tmp_path), variant="v2")


def test_a_folder_that_is_not_a_stitched_pipeline_needs_the_small_checkpoint(tiny_pair, tmp_path):
    large, _ = tiny_pair
    large.save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as err:
        StitchPipeline.from_pretrained(str(tmp_path))
    assert str(err.value).startswith("small: missing") and "\n" not in str(err.value)


def test_the_shapes_pair_refuses_save_pretrained_in_one_line():
    pipe = StitchPipeline.from_shapes()
    assert set(pipe.components) == {"transformer", "small_transformer", "text_encoder", "tokenizer", "scheduler"}
    with pytest.raises(ConfigError, match=r"^save_pretrained: .*ShapesPair\.save") as err:
        pipe.save_pretrained("unused")
    assert "\n" not in str(err.value)


def test_to_dtype_moves_every_component_as_diffusers_does(tiny_pair):
    import copy

    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=copy.deepcopy(large), small=copy.deepcopy(small))
    assert pipe.to("cpu", torch.float64) is pipe
    assert pipe.dtype == torch.float64 and pipe.small.dtype == torch.float64
    assert pipe.adapter.pipeline.transformer.dtype == torch.float64 and pipe.vae.dtype == torch.float64
    out = pipe(**HYBRID, generator=_gen(2))
    assert out.images.dtype == torch.float64 and torch.isfinite(out.images).all()


def test_attention_slicing_is_diffusers_own(stitch_pipe):
    stitch_pipe.enable_attention_slicing()  # SD3's transformer has no set_attention_slice: a no-op, as in diffusers
    stitch_pipe.disable_attention_slicing()


def test_setting_a_component_sets_it_on_the_large_pipeline_and_rebuilds_the_masked_runner(tiny_pair):
    import copy

    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=copy.deepcopy(large), small=small)
    new = copy.deepcopy(large.transformer)
    pipe.transformer = new
    assert pipe.adapter.pipeline.transformer is new and pipe.masked_large.model is new
    assert pipe.config.transformer == ("diffusers", "SD3Transformer2DModel")
