"""Issue 25: the last bad inputs of `run`, `plan`, `calibrate` and the Python API are refused in one line naming
the field (or flag) and the fix, before any model loads where the configuration alone tells; settings that
would mean nothing for their method are refused instead of run under another name. The inputs are our own
(the issue's two sets stay outside the project), one case per class the issue lists."""

import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.cli import main
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.sweeps import MAX_METHODS

BASE = """
name: demo
pair: tiny-random
sampler: {steps: 4, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
prompts: [a red circle]
seeds: [0]
methods:
  - large
output: out
"""


def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _load(tmp_path, text):
    return ExperimentConfig.from_yaml(_write(tmp_path, text))


def test_an_experiment_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: demo\n\xff\xfe junk")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(path)
    assert str(err.value) == f"{path}: is not UTF-8 text (byte 0xff at offset 11); save the experiment file as UTF-8 YAML"


@pytest.mark.parametrize("name, content, field, message", [
    ("empty.txt", b"", "prompts_file", "prompts_file: empty.txt has no prompts (0 bytes); one prompt a line"),
    ("blank.txt", b"\n  \n", "prompts_file", "prompts_file: blank.txt has no prompts (blank lines only)"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00", "prompts_file",
     "prompts_file: binary.txt is not UTF-8 text (byte 0x89; a binary file?); give a UTF-8 text file of prompts"),
    ("empty.csv", b"", "prompts_file", "prompts_file: empty.csv is empty (0 bytes); give a file with at least one"),
    ("empty.csv", b"", "prompts", "prompts.from: empty.csv is empty (0 bytes); give a file with at least one"),
    ("binary.jsonl", b'{"prompt": "a \xff"}\n', "prompts", "prompts.from: binary.jsonl is not UTF-8 text (byte 0xff"),
])
def test_a_prompts_file_empty_or_binary_is_named(tmp_path, name, content, field, message):
    (tmp_path / name).write_bytes(content)
    line = f"prompts_file: {name}" if field == "prompts_file" else f"prompts: {{from: {name}}}"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, BASE.replace("prompts: [a red circle]", line))
    assert str(err.value).startswith(message)


def test_a_sweep_is_sized_before_it_is_expanded(tmp_path):
    values = ", ".join(f"[{0.5 + i / 1e4:g}, 0.01]" for i in range(1000))
    ratios = ", ".join(f"[{0.1 + i / 2e3:g}]" for i in range(1000))
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, BASE.replace("  - large", f"  - {{switch: hybridstitch, grid: {{thresholds: [{values}], "
                                                   f"mask_ratios: [{ratios}]}}}}"))
    assert str(err.value) == ("methods[0].grid: has 1000 × 1000 = 1,000,000 points, more than the 1,000 methods "
                              "this experiment may still hold; sweep fewer values, or raise max_methods (default "
                              "1,000) if you mean it")
    grid = "  - {switch: hybridstitch, grid: {mask_ratios: [[0.2], [0.3], [0.4]], thresholds: [[0.5, 0.1], [0.4, 0.1]]}}"
    text = BASE.replace("  - large", "  - large\n" + grid)
    with pytest.raises(ConfigError, match=r"^methods\[1\]\.grid: has 3 × 2 = 6 points, more than the 4 methods"):
        _load(tmp_path, text + "max_methods: 5\n")
    assert len(_load(tmp_path, text + "max_methods: 7\n").methods) == 7  # the limit is overridable
    assert MAX_METHODS == 1000


@pytest.mark.parametrize("method, message", [
    ("{switch: large, cache: {small: {kind: magcache, threshold: 0.2}}}",
     "methods[0].cache.small: Large never runs the small model, so this cache would do nothing; remove it, or "
     "cache the large model"),
    ("{cache: {small: first-block}}", "methods[0].cache.small: Large never runs the small model"),
    ("{switch: small, cache: {kind: magcache, threshold: 0.2}}",
     "methods[0].cache: Small never runs the large model, so this cache would do nothing; remove it, or cache the "
     "small model"),
    ("{switch: large, cache: {kind: magcache, threshold: -0.2}}",
     "methods[0].cache: 'magcache' refused its parameters: threshold must be a finite number >= 0, got -0.2"),
    ("{switch: large, cache: {kind: first-block, threshold: .nan}}",
     "methods[0].cache: 'first-block' refused its parameters: threshold must be a finite number >= 0, got nan"),
    ("{switch: large, cache: {kind: magcache, retention_ratio: 1.5}}",
     "methods[0].cache: 'magcache' refused its parameters: retention_ratio must be in [0, 1], got 1.5"),
    ("{switch: large, cache: {kind: pab, spatial_attention_block_skip_range: 0}}",
     "methods[0].cache: 'pab' refused its parameters: spatial_attention_block_skip_range must be a finite number >= 1"),
])
def test_a_cache_that_would_do_nothing_is_refused(tmp_path, method, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, BASE.replace("  - large", f"  - {method}"))
    assert str(err.value).startswith(message)


def test_caches_that_act_are_accepted(tmp_path):
    """The README's compositions: a cache on the small model of a hybrid method, on the large of `large`."""
    config = _load(tmp_path, BASE.replace("  - large", "  - {cache: {kind: magcache, threshold: 0.24}}\n"
                                          "  - {name: hs, switch: hybridstitch-30, cache: {small: magcache}}\n"
                                          "  - {name: m0, switch: large, cache: {kind: first-block, threshold: 0}}"))
    assert [m.name for m in config.methods] == ["large", "hs", "m0"]


def test_python_api_refuses_a_mask_or_cache_the_method_never_uses(stitch_pipe):
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=8,
                output_type="latent")
    with pytest.raises(ConfigError, match=r"^mask: Large never runs a hybrid \(masked\) step, so a mask policy "
                                          r"would be ignored; remove mask: or use a switch policy with mask_ratios$"):
        stitch_pipe(**args, switch="large", mask="static")
    with pytest.raises(ConfigError, match=r"^cache\.small: Large never runs the small model"):
        stitch_pipe(**args, switch="large", cache={"small": "first-block"})
    with pytest.raises(ConfigError, match=r"^cache: 'magcache' refused its parameters: threshold must be"):
        stitch_pipe(**args, switch="large", cache={"kind": "magcache", "threshold": -1})
    hybrid = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}
    stitch_pipe(**args, switch=hybrid, mask="static", allow_unprofitable=True)  # a mask it uses: runs


SPEEDUP_FIX = "ask for a speedup above 1, e.g. --target-speedup 1.5"


@pytest.mark.parametrize("flag, value, message", [
    ("--target-speedup", "0.5", f"--target-speedup: is 0.5, at or below 1: the large model alone is 1x; {SPEEDUP_FIX}"),
    ("--target-speedup", "1.0", f"--target-speedup: is 1, at or below 1: the large model alone is 1x; {SPEEDUP_FIX}"),
    ("--target-speedup", "inf", "--target-speedup: is inf; give a finite number"),
    ("--target-large-steps", "0", "--target-large-steps: is 0, not above 0; give a positive budget of large-step "
                                  "equivalents"),
])
def test_calibrate_refuses_a_goal_that_means_nothing(tmp_path, capsys, flag, value, message):
    path = _write(tmp_path, BASE)
    assert main(["calibrate", str(path), "--method", "hybridstitch-30", flag, value, "-q"]) == 2
    assert capsys.readouterr().err == f"stitchkit calibrate: error: {message}\n"
