"""The shipped shapes pair and its classifier: they load offline and still measure what they claim."""

from __future__ import annotations

import json

import pytest
import torch

from stitchkit.shapes.classifier import DEFAULT_PATH as CLASSIFIER_PATH
from stitchkit.shapes.classifier import classifier_info, held_out_accuracy, load_classifier
from stitchkit.shapes.pair import DEFAULT_PATH as PAIR_PATH
from stitchkit.shapes.pair import encode_prompts, load_shapes_pair

pytestmark = pytest.mark.skipif(
    not (PAIR_PATH / "transformer_large").is_dir() or not (CLASSIFIER_PATH / "model.safetensors").is_file(),
    reason=f"the shapes pair's weights are not in {PAIR_PATH} (train them with `stitchkit train-pair`)",
)

#: Held-out accuracy on fresh pictures may fall this far below the recorded figure (sampling noise of
#: 1,000 pictures against the recorded 4,000).
MARGIN = 0.02


@pytest.fixture(scope="module")
def pair():
    return load_shapes_pair()


@pytest.fixture(scope="module")
def judge():
    return load_classifier()


def test_the_pair_loads_offline_with_the_documented_layout(pair):
    assert pair.resolution == 32 and pair.patch_size == 2 and pair.grid == (16, 16)
    for model in (pair.large, pair.small):
        assert model.config.in_channels == model.config.out_channels == 3
    large = sum(p.numel() for p in pair.large.parameters())
    small = sum(p.numel() for p in pair.small.parameters())
    assert 3e6 <= large <= 4e6 and 0.2e6 <= small <= 1.2e6 and large > 8 * small
    assert all(p.dtype == torch.float32 for p in pair.large.parameters())
    total = sum(f.stat().st_size for f in PAIR_PATH.rglob("*") if f.is_file())
    assert total <= 30 * 2**20


def test_prompts_encode_and_both_models_predict(pair):
    embeds, pooled = encode_prompts(pair, ["a large red square at the center on a white background", ""])
    assert embeds.shape == (2, 16, pair.large.config.joint_attention_dim)
    assert pooled.shape == (2, pair.large.config.pooled_projection_dim)
    assert not torch.allclose(pooled[0], pooled[1])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        for model in (pair.large, pair.small):
            v = model(hidden_states=x, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled,
                      return_dict=False)[0]
            assert v.shape == x.shape and torch.isfinite(v).all()


def test_classifier_reads_fresh_pictures_as_well_as_recorded(judge):
    recorded = classifier_info()["held_out_accuracy"]
    measured = held_out_accuracy(judge, count=1000, seed=424_242)
    for name, value in recorded.items():
        assert measured[name] >= value - MARGIN, (name, measured[name], value)


def test_recorded_metrics_are_there():
    info = json.loads((PAIR_PATH / "pair.json").read_text())
    assert info["training"]["step"] > 0
    assert {"large", "small"} <= set(info["evaluation"])


@pytest.mark.slow
def test_the_large_model_draws_its_captions_and_the_small_one_worse(pair, judge):
    from stitchkit.shapes.scores import caption_accuracy
    from stitchkit.shapes.evaluate import eval_prompts, generate

    prompts = eval_prompts(24)
    large = caption_accuracy(judge, generate(pair, "large", prompts, seed=0, steps=12), prompts)
    small = caption_accuracy(judge, generate(pair, "small", prompts, seed=0, steps=12), prompts)
    for name in ("colour", "size", "position", "background"):
        assert large[name] >= 0.9, (name, large)
    assert large["shape"] >= 0.75 and small["all"] <= large["all"] - 0.2, (large, small)
