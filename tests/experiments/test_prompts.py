"""Prompt sources: every format, seeded sampling that is the same in another process, one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.prompts import sample_indices

CAPTIONS = ["a red circle", "a blue square", "a green ring", "a white cross", "a cyan diamond"]


def _config(tmp_path, prompts_yaml: str) -> ExperimentConfig:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""
        pair: tiny-random
        {prompts_yaml}
        methods: [large]
        output: out
    """))
    return ExperimentConfig.from_yaml(path)


def _write(tmp_path, name: str, key: str = "caption") -> str:
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("\n".join(CAPTIONS[:2]) + "\n\n" + "\n".join(CAPTIONS[2:]) + "\n")
    elif name.endswith((".csv", ".tsv")):
        sep = "\t" if name.endswith(".tsv") else ","
        path.write_text(f"id{sep}{key}\n" + "".join(f"{i}{sep}{c}\n" for i, c in enumerate(CAPTIONS)))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({"id": i, key: c}) + "\n" for i, c in enumerate(CAPTIONS)))
    else:
        path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
            {"image_id": 1, "id": 10 + i, key: c} for i, c in enumerate(CAPTIONS)]}))
    return name


@pytest.mark.parametrize("name", ["p.txt", "p.csv", "p.tsv", "p.jsonl", "p.json"])
def test_each_format_reads_every_prompt_in_order(tmp_path, name):
    _write(tmp_path, name)
    config = _config(tmp_path, f"prompts: {{from: {name}}}")
    assert config.prompts == tuple(CAPTIONS)
    assert config.prompt_indices == (0, 1, 2, 3, 4)
    assert config.prompt_source["from"] == str((tmp_path / name).resolve())


@pytest.mark.parametrize("name", ["p.csv", "p.jsonl", "p.json"])
def test_field_names_another_column(tmp_path, name):
    _write(tmp_path, name, key="text")
    assert _config(tmp_path, f"prompts: {{from: {name}, field: text}}").prompts == tuple(CAPTIONS)


def test_prompt_key_is_found_without_field(tmp_path):
    _write(tmp_path, "p.jsonl", key="prompt")
    assert _config(tmp_path, "prompts: {from: p.jsonl}").prompts == tuple(CAPTIONS)


def test_sample_keeps_source_indices_and_names_units(tmp_path):
    _write(tmp_path, "p.json")
    config = _config(tmp_path, "prompts: {from: p.json, sample: 3, seed: 7}")
    expected = sample_indices(5, 3, 7)
    assert config.prompt_indices == tuple(expected) and len(set(expected)) == 3
    assert config.prompts == tuple(CAPTIONS[i] for i in expected)
    assert [pi for _, pi, _, _ in config.units] == list(expected)


def test_sampling_is_nested_sorted_and_seed_dependent():
    small, large = sample_indices(1000, 50, 3), sample_indices(1000, 200, 3)
    assert small == sorted(small) and set(small) <= set(large)
    assert sample_indices(1000, 50, 4) != small
    assert sample_indices(10, 10, 0) == list(range(10))


def test_sampling_is_the_same_in_another_process():
    """A fixed seed gives the same indices in a fresh interpreter (no dependence on hash seeds or state)."""
    code = "from stitchkit.experiments.prompts import sample_indices; print(sample_indices(600, 25, 42))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sample_indices(600, 25, 42)


@pytest.mark.parametrize("prompts, write, message", [
    ("{from: missing.json}", None, "prompts.from: no such file:"),
    ("{from: p.csv, field: text}", "p.csv", "prompts.field: the header of p.csv has no 'text'; has: id, caption"),
    ("{from: p.jsonl, field: text}", "p.jsonl", "prompts.field: line 1 has no 'text'"),
    ("{from: p.json, field: text}", "p.json", "prompts.field: annotations[0] has no 'text'"),
    ("{from: p.json, sample: 6}", "p.json", "prompts.sample: 6 is more than the 5 prompts of p.json"),
    ("{from: p.json, sample: 0}", "p.json", "prompts.sample: must be positive"),
    ("{from: p.xml}", None, "prompts.from: unknown format '.xml'"),
    ("{from: p.json, sampel: 3}", "p.json", "prompts.sampel: unknown key"),
    ("['a cat', '  ']", None, "prompts[1]: is empty"),
])
def test_errors_are_one_line_naming_the_field(tmp_path, prompts, write, message):
    if write:
        _write(tmp_path, write)
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, f"prompts: {prompts}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_empty_caption_is_refused_naming_the_row(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"caption": "a cat"}\n{"caption": ""}\n')
    with pytest.raises(ConfigError, match=r"prompts.field: prompt 1 of p.jsonl is empty"):
        _config(tmp_path, "prompts: {from: p.jsonl}")
