"""The ladder of pairs (issue 21): ``shapes-1x160`` is the shipped large model with the stronger 1x160 small,
loadable by name, from YAML and from its folder, and its ``pair.json`` holds an evaluation that a fresh
measurement reproduces."""

from __future__ import annotations

import json

import pytest
import torch

from stitchkit import StitchPipeline
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.shapes.pair import SHIPPED_PAIRS, component_folders, load_shapes_pair

RUNG = SHIPPED_PAIRS["shapes-1x160"]


@pytest.fixture(scope="module")
def rung():
    return StitchPipeline.from_pair("shapes-1x160")


def test_the_rung_runs_the_shipped_large_with_the_1x160_small(rung):
    base = StitchPipeline.from_pair("shapes")
    assert rung.pair_id == "shapes-1x160"
    large, base_large = rung.adapter.large_transformer, base.adapter.large_transformer
    assert all(torch.equal(a, b) for a, b in zip(large.state_dict().values(), base_large.state_dict().values()))
    config = rung.small.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (1, 5, 32)
    assert sum(p.numel() for p in rung.small.parameters()) == 781_580
    assert sum(p.numel() for p in base.small.parameters()) == 296_332
    # Only the small model ships in the rung's folder; the rest is the very files of shapes/.
    folders = component_folders(RUNG)
    assert folders["transformer_small"] == RUNG / "transformer_small"
    assert all(folders[name] == SHIPPED_PAIRS["shapes"].resolve() / name
               for name in ("tokenizer", "text_encoder", "transformer_large", "scheduler"))


def test_the_rung_loads_from_its_folder_and_from_yaml(tmp_path):
    folder = StitchPipeline.from_shapes(RUNG)
    assert sum(p.numel() for p in folder.small.parameters()) == 781_580
    config = ExperimentConfig.from_dict({"pair": "shapes-1x160", "prompts": ["a small red circle at the top left "
                                                                             "on a white background"],
                                         "metrics": ["caption_accuracy", "feature_distance"],
                                         "methods": ["t-stitch"], "output": str(tmp_path)})
    assert config.pair.name == "shapes-1x160"
    with pytest.raises(ConfigError, match="needs the shapes pair's attribute classifier"):
        ExperimentConfig.from_dict({"pair": "tiny-random", "prompts": ["a cat"], "metrics": ["caption_accuracy"],
                                    "methods": ["large"], "output": str(tmp_path)})


def test_a_pair_json_sharing_a_missing_folder_is_one_line(tmp_path):
    (tmp_path / "transformer_small").mkdir()
    (tmp_path / "pair.json").write_text(json.dumps({"shares": "../nowhere"}))
    with pytest.raises(ConfigError) as err:
        load_shapes_pair(tmp_path)
    assert "tokenizer/ is missing" in str(err.value) and "\n" not in str(err.value)


def test_the_rungs_pair_json_holds_its_evaluation():
    rung, base = (json.loads((SHIPPED_PAIRS[name] / "pair.json").read_text())["evaluation"]
                  for name in ("shapes-1x160", "shapes"))
    assert rung["prompts"] == base["prompts"] == 200 and rung["steps"] == base["steps"]
    # The same large model, measured the same way: the same figures.
    assert rung["large"] == base["large"]
    assert rung["small"]["accuracy"]["all"] > base["small"]["accuracy"]["all"] + 0.3
    assert rung["small"]["vs_large"]["feature_distance"] < base["small"]["vs_large"]["feature_distance"]


@pytest.mark.slow
def test_the_recorded_evaluation_is_reproduced_on_its_first_prompts(rung):
    """The first 24 of the 200 evaluation prompts, measured afresh as write_pair_evaluation measures them."""
    from stitchkit.shapes.classifier import load_classifier
    from stitchkit.shapes.evaluate import eval_prompts, generate
    from stitchkit.shapes.scores import caption_accuracy

    pair = load_shapes_pair(RUNG)
    prompts = eval_prompts(24)
    small = caption_accuracy(load_classifier(), generate(pair, "small", prompts, seed=0), prompts)["all"]
    recorded = json.loads((RUNG / "pair.json").read_text())["evaluation"]["small"]["accuracy"]["all"]
    assert abs(small - recorded) <= 0.2, (small, recorded)
    assert small >= 0.6
