"""Issue 14: values accepted that mean something else, and method names used as folders, are refused with
one line naming the field (Python: ConfigError; CLI: `stitchkit run: error: <path>: ...`, exit 2)."""

import json
import logging
import math
import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.cli import main
from stitchkit.experiments.config import ExperimentConfig

BASE = """
name: demo
pair: tiny-random
sampler: {steps: 4, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
prompts: [a red circle]
seeds: [0, 1]
methods:
  - large
  - {name: hs, switch: hybridstitch-30, mask: static}
output: out
"""


def _load(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return ExperimentConfig.from_yaml(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("guidance_scale: 3", "guidance_scale: .nan", "sampler.guidance_scale: is nan; give a finite number"),
        ("guidance_scale: 3", "guidance_scale: -2", "sampler.guidance_scale: is negative (-2)"),
        ("steps: 4", "steps: 100000", "sampler.steps: is 100000, above the limit of 1000"),
        ("seeds: [0, 1]", "seeds: [0, -1]", "seeds[1]: is -1, outside 0 to 2**63-1"),
        ("seeds: [0, 1]", "seeds: [0, 9223372036854775808]", "seeds[1]: is 9223372036854775808, outside"),
        ("seeds: [0, 1]", "seeds: [0, 0]", "seeds[1]: duplicate seed 0; list each seed once"),
        ("name: demo", "name: demo\nname: other", "name: duplicate key at line 3 (first at line 2)"),
        ("steps: 4,", "steps: 4, steps: 40,", "sampler.steps: duplicate key at line 4 (first at line 4)"),
        ("mask: static}", "mask: static, name: again}", "methods[1].name: duplicate key at line 9"),
        ("  - large", "  - {switch: {kind: srdiffusion, min_switch_step: 4, max_switch_step: 10}}",
         "methods[0].switch.min_switch_step: is 4, at or past the last step"),
        ("  - large", "  - {switch: t-stitch, mask: static}", "methods[0].mask: TStitch never runs a hybrid"),
        ("  - large", "  - {name: '', switch: large}", "methods[0].name: is empty"),
        ("  - large", "  - {name: ../../x, switch: large}", "methods[0].name: '../../x' has characters"),
        ("  - large", "  - {name: a..b, switch: large}", "methods[0].name: 'a..b' contains '..'"),
        ("  - large", "  - {name: ., switch: large}", "methods[0].name: '.' contains '..' or is '.'"),
        ("{name: hs,", "{name: LARGE,", "methods[1].name: duplicate method name 'LARGE' (names differ only in case)"),
    ],
)
def test_refused_with_the_field_path(tmp_path, old, new, message):
    assert old in BASE
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, BASE.replace(old, new, 1))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_accepted_edges(tmp_path):
    # guidance <= 1 is diffusers' "no guidance" (documented in stitchkit.values), accepted; so are the
    # bounds themselves and a sweep point's name with its brackets, commas and dashes.
    config = _load(tmp_path, BASE.replace("guidance_scale: 3", "guidance_scale: 1").replace("steps: 4", "steps: 1000")
                   .replace("seeds: [0, 1]", "seeds: [0, 9223372036854775807]")
                   .replace("  - large", "  - {switch: {kind: srdiffusion, min_switch_step: 999, max_switch_step: 999}}"
                            "\n  - {switch: hybridstitch, grid: {mask_ratios: [[0.2]], thresholds: [[0.15, 0.05]]}}"))
    assert config.sampler.guidance_scale == 1.0 and config.sampler.steps == 1000
    assert "hybridstitch[mask_ratios=0.2,thresholds=0.15-0.05]" in [m.name for m in config.methods]


def test_cli_refusal_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(BASE.replace("seeds: [0, 1]", "seeds: [3, 3]")))
    assert main(["run", str(tmp_path / "exp.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err == "stitchkit run: error: seeds[1]: duplicate seed 3; list each seed once\n"
    assert not (tmp_path / "out").exists()


def test_pipeline_refuses_zero_steps_and_nan_guidance():
    from stitchkit.pipeline.pairs import load_pair_pipeline

    pipe = load_pair_pipeline("tiny-random")
    with pytest.raises(ConfigError, match=r"^num_inference_steps: must be positive, got 0"):
        pipe("a red circle", num_inference_steps=0, height=64, width=64, max_sequence_length=8, switch="large")
    with pytest.raises(ConfigError, match=r"^guidance_scale: is nan"):
        pipe("a red circle", num_inference_steps=1, guidance_scale=math.nan, height=64, width=64,
             max_sequence_length=8, switch="large")


def test_profile_of_the_pixel_space_pair_is_the_one_run_loads(monkeypatch, tmp_path, capsys, caplog):
    """Issue 14: `stitchkit profile --pair shapes` took SD3's VAE factor 8 and 333 text tokens, timing the
    wrong size under the key `run` loads. Now both come from the pair, so `run` finds the profile and
    measures nothing."""
    import torch

    from stitchkit.experiments import pair_setup
    from stitchkit.pipeline.pairs import load_pair_pipeline

    torch.set_num_threads(1)
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "cache"))
    pipe = load_pair_pipeline("shapes")
    side = pipe.adapter.default_size()
    assert main(["profile", "--pair", "shapes", "--height", str(side), "--width", str(side), "--ratios", "0.5",
                 "--warmup", "0", "--repeats", "1", "--threads", "1", "--max-sequence-length", "8",
                 "--allow-noisy", "--json"]) == 0
    key = json.loads(capsys.readouterr().out.splitlines()[-1])["key"]
    assert pipe.adapter.vae_scale_factor == 1 and key["text_tokens"] != 333

    def no_measuring(*args, **kwargs):
        raise AssertionError("run measured a profile: the key differs from the one `stitchkit profile` cached")

    monkeypatch.setattr(pair_setup, "profile_transformers", no_measuring)  # where run looks it up
    config = ExperimentConfig.from_dict({"pair": "shapes", "prompts": ["a red circle"], "methods": ["large"],
                                         "sampler": {"steps": 2, "max_sequence_length": 8}}, base=tmp_path)
    with caplog.at_level(logging.INFO, logger="stitchkit"):  # what `stitchkit --verbose` shows
        costs = pair_setup.ensure_profile(pipe, config, pair_setup.run_size(pipe, config))
    assert [r for r, _ in costs.masked_ms] == [0.5]
    assert any(m.startswith("profile of shapes at 32x32 read from the cache") for m in caplog.messages)


def test_profile_of_an_unknown_pair_names_the_option(capsys):
    assert main(["profile", "--pair", "nosuchpair", "--height", "64", "--width", "64"]) == 2
    assert capsys.readouterr().err.startswith("stitchkit profile: error: --pair: unknown built-in pair 'nosuchpair'")
