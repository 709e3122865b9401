"""The run folder: config.resolved.yaml and environment.json, a changed config refused (or a new folder
with --force-new), and every report rebuilt from the records alone by `stitchkit report`."""

import json
import shutil
import textwrap

import pytest
import yaml

from stitchkit.cli import main
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.growth import first_difference

EXPERIMENT = """
    name: tiny
    pair: tiny-random
    sampler: {steps: 3, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle, a blue square]
    seeds: [0]
    metrics: [psnr, ssim]
    methods: [large, t-stitch, {switch: hybridstitch-30, grid: {mask_ratios: [[0.25]]}}]
    output: out
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    (folder / "exp.yaml").write_text(textwrap.dedent(EXPERIMENT))
    assert main(["run", str(folder / "exp.yaml"), "-q"]) == 0
    return folder


def test_resolved_config_and_environment_are_written(run):
    out = run / "out"
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["sampler"]["steps"] == 3 and resolved["sampler"]["max_sequence_length"] == 8
    assert [m["name"] for m in resolved["methods"]] == ["large", "t-stitch", "hybridstitch-30"]
    # Presets expanded, defaults written out; a sweep point is a one-point grid (its columns survive).
    assert resolved["methods"][1]["switch"] == {"kind": "t-stitch", "small_fraction": 0.4}
    point = resolved["methods"][2]
    assert point["name"] == "hybridstitch-30" and point["grid"] == {"mask_ratios": [[0.25]]}
    assert point["switch"]["kind"] == "hybridstitch" and point["switch"]["thresholds"] == [0.5, 0.3]
    assert "mask_ratios" not in point["switch"]
    # The resolved file is itself an experiment: loading it gives back the same configuration.
    again = ExperimentConfig.from_yaml(out / "config.resolved.yaml")
    assert again.prompts == ("a red circle", "a blue square") and again.output == out
    assert [m.name for m in again.methods] == [m.name for m in ExperimentConfig.from_yaml(run / "exp.yaml").methods]
    assert again.methods[2].params == {"mask_ratios": [0.25]}
    env = json.loads((out / "environment.json").read_text())
    import torch

    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] >= 1
    assert {"stitchkit", "diffusers", "transformers", "dtype", "git_commit"} <= set(env)


def test_results_have_human_headers_machine_csv_and_sweep_columns(run):
    out = run / "out"
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| method | mask_ratios | images | latency (ms) ↓ | denoising (ms) ↓ | speedup vs large (×) ↑")
    assert "PSNR vs large (dB) ↑" in table[0] and "SSIM vs large ↑" in table[0]
    assert any(line.startswith("| hybridstitch-30[mask_ratios=0.25] | 0.25 |") for line in table)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["method", "mask_ratios", "images", "latency_ms"] and header[-2:] == ["psnr", "ssim"]


def test_changed_config_is_refused_naming_the_first_field(run, capsys):
    changed = run / "changed.yaml"
    changed.write_text(textwrap.dedent(EXPERIMENT).replace("steps: 3", "steps: 4"))
    records = sorted((run / "out" / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert main(["run", str(changed), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stitchkit run: error: sampler.steps: differs from the run in") and "\n" not in err
    assert "(3 there, 4 now)" in err and "--force-new" in err
    assert [p.stat().st_mtime_ns for p in sorted((run / "out" / "records").rglob("*.json"))] == stamps


def test_force_new_continues_into_a_new_folder(run, capsys):
    changed = run / "seeds.yaml"
    changed.write_text(textwrap.dedent(EXPERIMENT).replace("seeds: [0]", "seeds: [1]")
                       .replace("methods: [large, t-stitch, {switch: hybridstitch-30, grid: {mask_ratios: [[0.25]]}}]",
                                "methods: [large]"))
    assert main(["run", str(changed), "-q", "--force-new"]) == 0
    out = capsys.readouterr().out
    assert "wrote " in out and "out-2/" in out
    assert (run / "out-2" / "images" / "large" / "p0000-s1.png").exists()
    assert not (run / "out" / "images" / "large" / "p0000-s1.png").exists()


def test_report_is_rebuilt_from_the_records_alone(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run / "out", copy)
    before = (copy / "results.csv").read_text()
    for name in ("results.md", "results.csv", "trace.jsonl", "grid.png", "masks.png", "frontier.png",
                 "switch_steps.png", "change.png"):
        (copy / name).unlink(missing_ok=True)
    assert main(["report", str(copy)]) == 0
    assert (copy / "results.csv").read_text() == before
    for name in ("results.md", "trace.jsonl", "grid.png", "frontier.png", "change.png", "switch_steps.png"):
        assert (copy / name).exists(), name
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("wrote ") and "frontier.png" in last and "config.resolved.yaml" in last


def test_report_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no config.resolved.yaml in" in capsys.readouterr().err


def test_first_difference_walks_mappings_and_lists():
    assert first_difference({"a": 1, "b": [1, {"c": 2}]}, {"a": 1, "b": [1, {"c": 3}]}) == ("b[1].c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "z": 0}) == ("z", "(absent)", 0)
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == ("a (length)", 1, 2)
    assert first_difference({"a": 1}, {"a": 1}) is None


def test_dry_run_prints_units_and_predicted_speedups_and_runs_nothing(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(EXPERIMENT))
    assert main(["run", str(exp), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: 3 methods × 2 prompts × 1 seed(s) = 6 units: 6 to generate, 0 already done in ")
    lines = out.splitlines()
    large = next(line for line in lines if line.strip().startswith("large "))
    assert "1.00×" in large and "(fixed schedule)" in large
    point = next(line for line in lines if line.strip().startswith("hybridstitch-30[mask_ratios=0.25]"))
    assert "×–" in point and "mask_ratios=[0.25]" in point  # adaptive: a range over first switch steps
    assert "  t-stitch  p0001-s0  a blue square" in out
    assert not (tmp_path / "out").exists()


def test_a_method_may_carry_a_diffusers_cache_from_yaml(tmp_path):
    """`cache:` in a method reaches StitchPipeline(cache=...): the run differs from large alone, the resolved
    config keeps it, and a bad cache spec is refused before anything runs with its path."""
    import pytest
    import yaml

    from stitchkit.errors import ConfigError
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.runner import run_experiment

    data = {"name": "cache", "pair": "tiny-random", "output": "out", "allow_unprofitable": True,
            "sampler": {"steps": 4, "guidance_scale": 3.0, "height": 64, "width": 64, "max_sequence_length": 8},
            "prompts": ["a red circle"], "seeds": [0],
            "methods": ["large", {"name": "large-fbc", "cache": {"kind": "first-block", "threshold": 0.5}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    config = ExperimentConfig.from_yaml(path)
    assert config.methods[1].switch == "large" and config.methods[1].cache == {"kind": "first-block", "threshold": 0.5}
    out = run_experiment(config, progress=False)
    assert (out / "images" / "large" / "p0000-s0.png").read_bytes() != (
        out / "images" / "large-fbc" / "p0000-s0.png").read_bytes()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["methods"][1]["cache"] == {"kind": "first-block", "threshold": 0.5}
    bad = {**data, "methods": ["large", {"name": "x", "cache": {"kind": "no-such-cache"}}]}
    with pytest.raises(ConfigError, match=r"^methods\[1\]\.cache"):
        ExperimentConfig.from_dict(bad, base=tmp_path)


def test_batch_size_generates_units_together_and_records_each_as_alone(tmp_path):
    """sampler.batch_size: units of one method share one batched loop; each unit keeps its own record and
    image, with the switch steps it gets alone and pixels within one 8-bit level of the batch-1 run (batched
    matmuls round differently in the last float bits; see tests/test_batched_generation.py)."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.runner import run_experiment

    base = {"name": "b", "pair": "tiny-random", "allow_unprofitable": True, "seeds": [0, 1],
            "prompts": ["a red circle", "a blue square", "a green star"],
            "methods": ["large", {"name": "hs", "switch": {"kind": "hybridstitch-30", "thresholds": [0.5, 0.3]}}]}
    runs = {}
    for k in (1, 4):
        data = {**base, "output": f"out{k}", "sampler": {"steps": 6, "guidance_scale": 3.0, "height": 64,
                                                          "width": 64, "max_sequence_length": 8, "batch_size": k}}
        (tmp_path / f"e{k}.yaml").write_text(yaml.safe_dump(data))
        runs[k] = run_experiment(ExperimentConfig.from_yaml(tmp_path / f"e{k}.yaml"), progress=False)
    one, four = runs[1], runs[4]
    records = sorted(p.relative_to(one) for p in (one / "records").rglob("*.json"))
    assert records == sorted(p.relative_to(four) for p in (four / "records").rglob("*.json")) and len(records) == 12
    for rel in records:
        a, b = json.loads((one / rel).read_text()), json.loads((four / rel).read_text())
        assert [r["stage"] for r in a["trace"]] == [r["stage"] for r in b["trace"]]
        assert a["batch_size"] == 1 and b["batch_size"] in (2, 4)  # 6 units a method: one batch of 4, one of 2
        image = rel.with_suffix(".png").as_posix().replace("records/", "images/", 1)
        x = np.asarray(Image.open(one / image), dtype=np.int16)
        y = np.asarray(Image.open(four / image), dtype=np.int16)
        assert np.abs(x - y).max() <= 1


def test_results_md_parses_as_a_table_whose_header_matches_its_separator(run):
    """A Markdown parser (markdown-it-py, GFM tables) reads results.md as one table: as many header cells as
    the separator row has, every body row as wide, and `mean |image − large|` kept whole in one cell."""
    from markdown_it import MarkdownIt

    text = (run / "out" / "results.md").read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert [t.type for t in tokens].count("table_open") == 1
    separator = text.splitlines()[1]
    columns = separator.count("---")
    rows, cells = [], None
    for token in tokens:
        if token.type == "tr_open":
            cells = []
        elif token.type == "inline" and cells is not None:
            cells.append(token.content)
        elif token.type == "tr_close":
            rows.append(cells)
            cells = None
    assert len(rows[0]) == columns and all(len(row) == columns for row in rows)
    assert "mean |image − large| ↓" in rows[0] and len(rows) == 1 + 3  # header + one row per method
