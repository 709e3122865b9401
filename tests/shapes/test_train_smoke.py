"""A few training steps on tiny configs: the loop runs, exports a loadable pair, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from stitchkit.errors import ConfigError
from stitchkit.shapes.pair import PairConfig, TransformerSize, encode_prompts, load_shapes_pair
from stitchkit.shapes.sampling import sample
from stitchkit.shapes.train import CHECKPOINT, TrainConfig, train_pair

TINY_PAIR = PairConfig(
    resolution=16,
    large=TransformerSize(layers=2, heads=2, head_dim=8),
    small=TransformerSize(layers=1, heads=1, head_dim=8),
    text_hidden=16, text_layers=1, text_heads=2, text_projection=16,
)


def _config(steps: int, **kw) -> TrainConfig:
    return TrainConfig(seed=3, steps=steps, batch_size=3, warmup=2, pair=TINY_PAIR, checkpoint_every=100,
                       log_every=1, **kw)


def _weights(path) -> dict[str, torch.Tensor]:
    state = torch.load(path / CHECKPOINT, weights_only=False)
    flat = {}
    for group in ("models", "ema"):
        for name, sd in state[group].items():
            flat.update({f"{group}.{name}.{k}": v for k, v in sd.items()})
    for i, s in state["optimizer"]["state"].items():
        flat.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return flat


def test_resumed_training_equals_uninterrupted(tmp_path):
    whole = train_pair(_config(4), tmp_path / "whole", device="cpu", progress=False)
    first = train_pair(_config(2), tmp_path / "split", device="cpu", progress=False)
    assert first.step == 2
    second = train_pair(_config(4), tmp_path / "split", device="cpu", progress=False)
    assert whole.step == second.step == 4
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]


def test_exported_pair_loads_and_samples(tmp_path):
    result = train_pair(_config(2, extra_smalls=(TransformerSize(layers=1, heads=2, head_dim=8),)),
                        tmp_path, device="cpu", progress=False)
    pair = load_shapes_pair(result.pair_path)
    assert (tmp_path / "variants" / "transformer_small_1x16" / "config.json").is_file()
    assert pair.grid == (8, 8)
    embeds, pooled = encode_prompts(pair, ["a small red circle at the center on a blue background", ""])
    assert embeds.shape == (2, 16, 16) and pooled.shape == (2, 16)
    for which in ("large", "small"):
        images = sample(pair, which, ["a large blue ring at the top left on a white background"], seed=0, steps=2)
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    info = json.loads((result.pair_path / "pair.json").read_text())
    assert info["training"]["step"] == 2


def test_resuming_with_another_config_is_refused(tmp_path):
    train_pair(_config(1), tmp_path, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="different training configuration"):
        train_pair(_config(2, lr=5e-4), tmp_path, device="cpu", progress=False)


def test_time_limit_stops_and_still_exports(tmp_path):
    result = train_pair(_config(1000), tmp_path, device="cpu", max_minutes=0.0, progress=False)
    assert result.stopped_by_time and result.step == 0
    assert (result.pair_path / "transformer_large" / "config.json").is_file()


def test_command_rejects_a_bad_candidate_size(tmp_path):
    from stitchkit.commands.train_pair import command

    outcome = CliRunner().invoke(command, ["--out", str(tmp_path), "--also-small", "2x100", "--steps", "1"])
    assert outcome.exit_code == 2 and "not a multiple of the head size" in outcome.output


def test_a_candidate_may_not_repeat_the_small_model():
    with pytest.raises(ConfigError, match=r"extra_smalls\[0\]: size 1x8 is trained already"):
        _config(1, extra_smalls=(TINY_PAIR.small,))


def test_command_defaults_mirror_the_config():
    from stitchkit.commands.train_pair import command

    defaults = {p.name: p.default for p in command.params}
    config = TrainConfig()
    assert defaults["steps"] == config.steps and defaults["batch_size"] == config.batch_size
    assert defaults["lr"] == config.lr and defaults["warmup"] == config.warmup
    assert defaults["ema_decay"] == config.ema_decay and defaults["seed"] == config.seed
    assert TransformerSize.parse(defaults["large_size"]) == config.pair.large
    assert TransformerSize.parse(defaults["small_size"]) == config.pair.small


def test_saving_a_pair_keeps_the_folder_s_other_entries(tmp_path):
    from stitchkit.shapes.pair import build_pair

    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "config.json").write_text("{}")
    pair = build_pair(TINY_PAIR, seed=0)
    pair.save(tmp_path)
    pair.save(tmp_path, metadata={"note": "again"})
    assert (tmp_path / "classifier" / "config.json").read_text() == "{}"
    assert json.loads((tmp_path / "pair.json").read_text())["note"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["classifier", "pair.json", "scheduler", "text_encoder", "tokenizer", "transformer_large",
         "transformer_small"])
