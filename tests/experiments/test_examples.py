"""The shipped experiment files parse: the paper's Table 1 protocol (for a GPU) and its shapes twin."""

import json
import shutil
from pathlib import Path

import pytest

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_paper_table1_reads_captions_and_then_asks_for_the_metric_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copy(EXAMPLES / "paper_table1.yaml", tmp_path)
    (tmp_path / "coco_val2014").mkdir()
    captions = [{"image_id": i, "id": i, "caption": f"caption number {i}"} for i in range(6000)]
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": captions}))
    with pytest.raises(ConfigError) as err:  # everything before the metrics parsed; FID's network is absent here
        ExperimentConfig.from_yaml(tmp_path / "paper_table1.yaml")
    assert str(err.value).startswith("metrics[0]: fid needs torch-fidelity's Inception network")


def test_paper_table1_without_its_metrics_is_the_papers_protocol(tmp_path):
    import yaml

    data = yaml.safe_load((EXAMPLES / "paper_table1.yaml").read_text())
    captions = [{"image_id": i, "id": i, "caption": f"caption number {i}"} for i in range(6000)]
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": captions}))
    assert [m["kind"] for m in data.pop("metrics")] == ["fid", "clip_score", "lpips"]
    config = ExperimentConfig.from_dict(data, base=tmp_path)
    assert len(config.prompts) == 5000 and config.sampler.steps == 50
    assert (config.sampler.height, config.sampler.width) == (768, 768)
    assert config.pair.large == "stabilityai/stable-diffusion-3.5-large" and config.pair.dtype == "bfloat16"
    names = [m.name for m in config.methods]
    assert names[:4] == ["large", "small", "t-stitch", "srdiffusion"]
    assert config.methods[3].switch["threshold"] == 0.005  # the paper's §4.1, not the default 0.01
    assert {f"{k}-{r}" for k in ("hybridstitch", "staticmask") for r in (10, 20, 30, 40)} <= set(names)


def test_the_shapes_twin_samples_32_prompts_and_sweeps_the_mask_ratios():
    config = ExperimentConfig.from_yaml(EXAMPLES / "paper_table1_shapes.yaml")
    assert len(config.prompts) == 32 and config.prompt_indices == tuple(sorted(config.prompt_indices))
    assert max(config.prompt_indices) < 200 and config.pair.name == "shapes"
    assert "hybridstitch[mask_ratios=0.1]" in [m.name for m in config.methods]
    assert "staticmask[mask_ratios=0.4]" in [m.name for m in config.methods]
    assert config.metric_names == ("caption_accuracy", "feature_distance", "frechet", "psnr", "ssim")


def test_the_calibrated_paper_tables_carry_every_row_and_the_ablations_share_their_sizes_thresholds():
    """examples/paper_tables.calibrated.yaml is what examples/paper_tables.sh wrote: every row of the README's
    tables (a)-(c), and Table 2's ablations at exactly the thresholds of their HybridStitch size (§4.3)."""
    base = ExperimentConfig.from_yaml(EXAMPLES / "paper_tables.yaml")
    config = ExperimentConfig.from_yaml(EXAMPLES / "paper_tables.calibrated.yaml")
    assert (config.pair.name, config.sampler, config.metric_names) == (base.pair.name, base.sampler,
                                                                        base.metric_names)
    assert config.prompts == base.prompts and len(config.prompts) == 200
    switches = {m.name: m.switch for m in config.methods}
    single = ["t-stitch", "srdiffusion"] + [f"hybridstitch-{s}" for s in (10, 20, 30, 40)]
    expected = {"large", "small", *single, "hybridstitch-20-10", "hybridstitch-30-10", "hybridstitch-40-30",
                "srdiffusion[=hybridstitch-30]", "t-stitch[=hybridstitch-30]",
                *(f"{m}[{t}x]" for m in single for t in ("2.0", "1.5")),
                *(f"{k}-{s}" for k in ("staticmask", "fulllarge") for s in (10, 20, 30, 40))}
    assert set(switches) == expected
    for size in (10, 20, 30, 40):
        thresholds = switches[f"hybridstitch-{size}"]["thresholds"]
        assert len(thresholds) == 2
        for ablation in ("staticmask", "fulllarge"):
            assert switches[f"{ablation}-{size}"] == {"kind": f"{ablation}-{size}", "thresholds": thresholds}


def test_paper_tables_summary_reprices_each_trace_with_the_given_profile(tmp_path, capsys):
    """examples/paper_tables_summary.py --profile: the predicted speedup is the large model's mean over a
    method's mean, each unit priced step by step by hand (a full step L_l, a 30 % step L_l(0.3) + L_s, a
    small step L_s), not the run's own predicted column."""
    import csv
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("paper_tables_summary", EXAMPLES / "paper_tables_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    run = tmp_path / "run"

    def step(ratio, small):
        return {"mask_ratio": ratio, "small_tokens": 256 if small else 0}

    traces = {"large": [[step(1.0, False)] * 4] * 2,
              "hybridstitch-30": [[step(1.0, False), step(0.3, True), step(0.3, True), step(0.0, True)],
                                  [step(1.0, False), step(0.3, True), step(0.0, True), step(0.0, True)]]}
    for method, units in traces.items():
        (run / "records" / method).mkdir(parents=True)
        for i, trace in enumerate(units):
            (run / "records" / method / f"p{i:04d}-s0.json").write_text(json.dumps({"trace": trace}))
    with open(run / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["method", "predicted_denoise_ms", "large_step_equivalents"])
        writer.writeheader()
        writer.writerows([{"method": m, "predicted_denoise_ms": 1.0, "large_step_equivalents": 1.0} for m in traces])
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"methods": [
        {"name": "large"}, {"name": "hybridstitch-30", "switch": {"kind": "hybridstitch-30", "thresholds": [0.1, 0.05]}}]}))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"costs": {"large_ms": 40.0, "small_ms": 5.0,
                                             "masked_ms": [[0.1, 10.0], [0.3, 20.0], [0.5, 30.0]]}}))
    large = 4 * 40.0
    method = ((40 + 2 * (20 + 5) + 5) + (40 + (20 + 5) + 2 * 5)) / 2
    assert summary.main([str(run), "--profile", str(profile)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| hybridstitch-30 |"))
    assert f"| {large / method:.2f}× |" in row and "thresholds 0.1, 0.05" in row
