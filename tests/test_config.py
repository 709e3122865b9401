"""Experiment YAML: read in one place, every bad value a one-line error with the field's path."""

import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig

GOOD = """
name: demo
pair: tiny-random
sampler: {steps: 4, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
prompts: [a red circle, a blue square]
seeds: [0, 1]
methods:
  - large
  - {name: hs, switch: hybridstitch-30, mask: static}
  - {name: custom, switch: {kind: hybridstitch, thresholds: [0.5, 0.3], mask_ratios: [0.3]}}
output: out
"""


def _load(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return ExperimentConfig.from_yaml(path)


def test_good_file_structures_into_frozen_classes(tmp_path):
    config = _load(tmp_path, GOOD)
    assert config.sampler.steps == 4 and config.sampler.guidance_scale == 3.0
    assert [m.name for m in config.methods] == ["large", "hs", "custom"]
    assert config.methods[1].mask == "static" and config.seeds == (0, 1)
    assert config.output == tmp_path / "out"
    with pytest.raises(AttributeError):
        config.name = "x"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("name: demo", "name: demo\ncolour: red", "colour: unknown key; allowed: name, pair"),
        ("steps: 4", "steps: 0", "sampler.steps: must be positive, got 0"),
        ("steps: 4", "stepz: 4", "sampler.stepz: unknown key"),
        ("pair: tiny-random", "pair: huge", "pair: unknown built-in pair 'huge'; known: tiny-random"),
        ("seeds: [0, 1]", "seeds: [0, one]", "seeds[1]: expected int, got 'one'"),
        ("  - large", "  - lrage", "methods[0].switch: unknown switch policy 'lrage'; known: "),
        ("thresholds: [0.5, 0.3]", "thresholds: [0.3, 0.5]", "methods[2].switch.thresholds:"),
        ("mask: static", "mask: statik", "methods[1].mask: unknown mask policy 'statik'; known: "),
        ("{name: hs,", "{name: large,", "methods[1].name: duplicate method name 'large'"),
        ("mask_ratios: [0.3]}", "mask_ratios: [0.3], bogus: 2}", "methods[2].switch.bogus: unknown parameter"),
        ("seeds: [0, 1]", "seeds: [0, 1]\nmetrics: [fidd]", "metrics[0]: unknown metric 'fidd'; known: caption_accuracy"),
        ("seeds: [0, 1]", "seeds: [0, 1]\nmetrics: [caption_accuracy]",
         "metrics[0]: caption_accuracy needs the shapes pair's attribute classifier"),
    ],
)
def test_errors_carry_the_path(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, GOOD.replace(old, new))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_prompts_file_is_relative_to_the_yaml(tmp_path):
    (tmp_path / "prompts.txt").write_text("one\n\ntwo\n")
    config = _load(tmp_path, GOOD.replace("prompts: [a red circle, a blue square]", "prompts_file: prompts.txt"))
    assert config.prompts == ("one", "two")


def test_invalid_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        _load(tmp_path, "methods: [large\nseeds: 1")
