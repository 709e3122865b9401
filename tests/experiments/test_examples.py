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
