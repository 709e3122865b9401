"""Sweeps: a method's grid expands to the Cartesian product, named stably, refused point by point."""

import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.sweeps import format_value, point_name


def _config(tmp_path, methods: str) -> ExperimentConfig:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""
        pair: tiny-random
        prompts: [a cat]
        seeds: [0, 1]
        output: out
        methods:
    """) + textwrap.indent(textwrap.dedent(methods), "  "))
    return ExperimentConfig.from_yaml(path)


def test_grid_expands_to_the_product_in_written_order(tmp_path):
    config = _config(tmp_path, """
        - large
        - {switch: hybridstitch, grid: {mask_ratios: [[0.2], [0.3]], thresholds: [[0.5, 0.3], [0.15, 0.05]]}}
    """)
    names = [m.name for m in config.methods]
    assert names == ["large",
                     "hybridstitch[mask_ratios=0.2,thresholds=0.5-0.3]",
                     "hybridstitch[mask_ratios=0.2,thresholds=0.15-0.05]",
                     "hybridstitch[mask_ratios=0.3,thresholds=0.5-0.3]",
                     "hybridstitch[mask_ratios=0.3,thresholds=0.15-0.05]"]
    point = config.methods[2]
    assert point.params == {"mask_ratios": [0.2], "thresholds": [0.15, 0.05]}
    assert point.switch == {"kind": "hybridstitch", "mask_ratios": [0.2], "thresholds": [0.15, 0.05]}
    assert len(config.units) == 5 * 1 * 2  # seeds stay the outer product


def test_grid_over_a_preset_keeps_its_other_parameters_and_a_given_name(tmp_path):
    config = _config(tmp_path, """
        - {name: ts, switch: {kind: t-stitch}, grid: {small_fraction: [0.2, 0.4]}}
    """)
    assert [m.name for m in config.methods] == ["ts[small_fraction=0.2]", "ts[small_fraction=0.4]"]
    assert config.methods[1].switch == {"kind": "t-stitch", "small_fraction": 0.4}


def test_names_are_stable_and_readable():
    assert point_name("hs", {"mask_ratios": [0.2], "thresholds": [0.15, 0.05]}) == \
        "hs[mask_ratios=0.2,thresholds=0.15-0.05]"
    assert format_value(True) == "true" and format_value(1e-4) == "0.0001" and format_value("static") == "static"


def test_an_invalid_point_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, """
            - {switch: hybridstitch, grid: {thresholds: [[0.5, 0.3], [0.3, 0.5]], mask_ratios: [[0.3]]}}
        """)
    message = str(err.value)
    assert message.startswith("methods[0].grid[hybridstitch[thresholds=0.3-0.5,mask_ratios=0.3]].switch")
    assert "decreasing" in message and "\n" not in message


def test_a_grid_must_be_a_mapping_of_lists(tmp_path):
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.grid\.mask_ratios: expected a non-empty list"):
        _config(tmp_path, "- {switch: hybridstitch, grid: {mask_ratios: 0.3}}\n")


def test_a_point_colliding_with_a_written_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="duplicate method name 't-stitch\\[small_fraction=0.4\\]'"):
        _config(tmp_path, """
            - {name: "t-stitch[small_fraction=0.4]", switch: t-stitch}
            - {switch: t-stitch, grid: {small_fraction: [0.4]}}
        """)
