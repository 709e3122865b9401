"""Trackers (issue 24): `trackers: [tensorboard]` writes an event file holding the results table's metrics,
read back here with TensorBoard's own EventAccumulator and compared with results.csv; a tracker whose package
is missing, or an unknown one, is refused at `trackers[i]` before anything runs."""

import csv
import textwrap

import pytest

from stitchkit.cli import main
from stitchkit.errors import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.trackers.mlflow import mlflow_key

EXPERIMENT = """
    name: tracked
    pair: tiny-random
    sampler: {steps: 2, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle, a blue square]
    metrics: [psnr]
    methods: [large, t-stitch]
    trackers: [tensorboard]
    output: out
"""


def test_tensorboard_event_file_holds_the_results_tables_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package writes and reads event files")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "exp.yaml").write_text(textwrap.dedent(EXPERIMENT))
    assert main(["run", str(tmp_path / "exp.yaml"), "-q"]) == 0
    events = list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    with open(tmp_path / "out" / "results.csv") as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    assert set(table) == {"large", "t-stitch"}
    for method, row in table.items():
        for column in ("speedup", "large_step_equivalents", "latency_ms", "psnr"):
            if row[column] == "":  # psnr of large against itself is not a number
                assert f"{method}/{column}" not in scalars
                continue
            (event,) = scalars[f"{method}/{column}"]
            assert event.step == 4 and event.value == pytest.approx(float(row[column]), rel=1e-6)
    assert {"grid", "frontier", "change"} <= set(acc.Tags()["images"])


def test_unknown_or_uninstalled_trackers_are_refused_at_their_index(tmp_path, monkeypatch):
    base = textwrap.dedent(EXPERIMENT)
    (tmp_path / "a.yaml").write_text(base.replace("[tensorboard]", "[tensorboard, nope]"))
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(tmp_path / "a.yaml")
    assert err.value.path.startswith("trackers[1]")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    (tmp_path / "b.yaml").write_text(base.replace("[tensorboard]", "[{kind: wandb, project: p}]"))
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(tmp_path / "b.yaml")
    assert err.value.path == "trackers[0].kind" and "pip install wandb" in str(err.value)


def test_mlflow_keys_keep_only_the_characters_mlflow_allows():
    assert mlflow_key("hybridstitch[mask_ratios=0.2,x=1]/speedup") == "hybridstitch_mask_ratios_0.2_x_1_/speedup"
