"""stitchkit.cost.profile: the FLOP estimate, the cache, measuring tiny random transformers, the command."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from stitchkit.errors import ConfigError
from stitchkit.families.sd3 import FAMILY as SD3_FAMILY
from stitchkit.cost.latency import Costs, validate_costs
from stitchkit.cost.profile import (
    DEFAULT_RATIOS,
    ProfileKey,
    estimate_costs_from_configs,
    format_costs,
    load_profile,
    profile_dir,
    profile_path,
    save_profile,
    transformer_flops,
)

SD35_LARGE = dict(num_layers=38, num_attention_heads=38, attention_head_dim=64, patch_size=2, in_channels=16,
                  out_channels=16, joint_attention_dim=4096)
SD3_MEDIUM = dict(SD35_LARGE, num_layers=24, num_attention_heads=24)

# ------------------------------------------------------------------------------------------------ FLOPs


def test_flops_of_one_block_by_hand():
    d, n, t = 32, 64, 10
    config = dict(num_layers=1, num_attention_heads=2, attention_head_dim=16, patch_size=2, in_channels=16,
                  out_channels=16, joint_attention_dim=32)
    outside = 2 * 4 * 16 * d * n + 2 * 32 * d * t + 2 * d * 4 * 16 * n
    # One block, also the last (context_pre_only): image QKV + out + MLP, text K/V, image queries only.
    block = 24 * d * d * n + 4 * d * d * t + 4 * n * (n + t) * d
    assert transformer_flops(config, n, t) == pytest.approx(outside + block)


def test_estimate_for_the_real_pairs_is_plausible():
    costs = estimate_costs_from_configs(SD35_LARGE, SD3_MEDIUM, 4096, 333)
    assert costs.source == "flops-estimate" and costs.large_ms == 1.0
    # Width² × depth: (1536/2432)² · 24/38 ≈ 0.25, a little more from attention's D (not D²) term.
    assert 0.24 < costs.small_ms < 0.30
    shares = [ms for _, ms in costs.masked_ms]
    assert [r for r, _ in costs.masked_ms] == list(DEFAULT_RATIOS)
    assert shares == sorted(shares)
    assert all(ms > r for r, ms in costs.masked_ms)  # text tokens keep a floor under the paper's L_l · M
    validate_costs(costs)


def test_estimate_scales_and_text_sets_the_floor():
    few = estimate_costs_from_configs(SD35_LARGE, SD3_MEDIUM, 1024, 0, ratios=(0.1,), large_ms=50.0)
    many = estimate_costs_from_configs(SD35_LARGE, SD3_MEDIUM, 1024, 333, ratios=(0.1,), large_ms=50.0)
    assert few.large_ms == 50.0
    assert few.masked_ms[0][1] < many.masked_ms[0][1]
    assert few.masked_ms[0][1] == pytest.approx(50.0 * 0.1, rel=0.05)  # without text, close to the paper's


def test_dual_attention_layers_count():
    dual = dict(SD3_MEDIUM, dual_attention_layers=tuple(range(13)))
    assert transformer_flops(dual, 4096, 333) > transformer_flops(SD3_MEDIUM, 4096, 333)


# ------------------------------------------------------------------------------------------------ cache

#: The family that times the tiny SD3 transformers (a pipeline hands in its own ``pipe.family``).
SD3 = SD3_FAMILY
KEY = ProfileKey(pair="tiny-random", height=64, width=64, dtype="float32", device="cpu")
COSTS = Costs(large_ms=10.0, small_ms=2.0, masked_ms=[(0.1, 2.5), (0.5, 6.0)], source="profile")


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path))
    assert profile_dir() == tmp_path / "profiles"
    monkeypatch.delenv("STITCHKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert profile_dir() == tmp_path / "xdg" / "stitchkit" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert profile_dir() == tmp_path / "home" / ".cache" / "stitchkit" / "profiles"


def test_save_and_load(monkeypatch, tmp_path):
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path))
    assert load_profile(KEY) is None
    path = save_profile(KEY, COSTS, extra={"repeats": 5})
    assert path == profile_path(KEY) and path.parent == tmp_path / "profiles"
    assert os.listdir(path.parent) == [path.name]  # the temporary file is gone
    assert load_profile(KEY) == COSTS
    data = json.loads(path.read_text())
    assert data["key"] == KEY.to_dict() and data["repeats"] == 5
    # Another key, another file.
    other = ProfileKey(pair="tiny-random", height=64, width=64, dtype="bfloat16", device="cpu")
    assert load_profile(other) is None
    save_profile(other, COSTS)
    assert len(os.listdir(path.parent)) == 2


def test_overwrite_is_atomic_and_odd_names_are_safe(tmp_path):
    key = ProfileKey(pair="org/model:v1", height=1024, width=768, dtype="bfloat16", device="cuda:0")
    assert "/" not in key.filename() and ":" not in key.filename()
    save_profile(key, COSTS, directory=tmp_path)
    newer = Costs(large_ms=9.0, small_ms=2.0, source="profile")
    save_profile(key, newer, directory=tmp_path)
    assert load_profile(key, directory=tmp_path) == newer
    assert [p.name for p in tmp_path.iterdir()] == [key.filename()]


def test_unreadable_or_foreign_files_count_as_missing(tmp_path):
    path = save_profile(KEY, COSTS, directory=tmp_path)
    path.write_text("{not json")
    assert load_profile(KEY, directory=tmp_path) is None
    save_profile(KEY, COSTS, directory=tmp_path)
    data = json.loads(path.read_text())
    data["key"]["batch"] = 4  # a file that holds another key
    path.write_text(json.dumps(data))
    assert load_profile(KEY, directory=tmp_path) is None


def test_format_costs():
    lines = format_costs(COSTS)
    assert lines[1].split()[:2] == ["large", "10.000"]
    assert any(line.startswith("masked M=0.5") for line in lines)
    assert lines[-1] == "Eq. 7 bound: M_1 < 1 - Ls/Ll = 0.800"
    assert "estimate" in format_costs(estimate_costs_from_configs(SD35_LARGE, SD3_MEDIUM, 64, 8))[0]


# ------------------------------------------------------------------------------ measuring tiny models


def _tiny(num_layers: int, seed: int):
    torch = pytest.importorskip("torch")
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
        pooled_projection_dim=32, pos_embed_max_size=32,
    )


@pytest.fixture(scope="module")
def tiny_transformers():
    return _tiny(2, 0), _tiny(1, 1)


def test_profile_transformers_on_tiny_models(tiny_transformers):
    from stitchkit.cost.profile import profile_transformers

    import torch

    large, small = tiny_transformers
    threads = torch.get_num_threads()
    before = {name: type(p) for name, p in large.attn_processors.items()}
    costs = profile_transformers(large, small, latent_height=16, latent_width=16, text_tokens=8, batch=2,
                                 ratios=(0.1, 0.5), warmup=1, repeats=2, num_threads=1, family=SD3)
    assert costs.source == "profile"
    assert [r for r, _ in costs.masked_ms] == [0.1, 0.5]
    validate_costs(costs)  # every time finite and above 0
    # The masked runner is gone again: the stock processors are back.
    assert {name: type(p) for name, p in large.attn_processors.items()} == before
    assert torch.get_num_threads() == threads  # restored after measuring with one


def test_random_inputs_have_the_pipeline_shapes(tiny_transformers):
    import torch

    from stitchkit.cost.profile import random_inputs

    inputs = random_inputs(tiny_transformers[0], latent_height=16, latent_width=8, text_tokens=5, batch=2,
                           dtype=torch.float32, device="cpu")
    assert inputs.hidden_states.shape == (2, 16, 16, 8)
    assert inputs.encoder_hidden_states.shape == (2, 5, 32)
    assert inputs.pooled_projections.shape == (2, 32)
    assert inputs.timestep.shape == (2,)


def test_profile_transformers_refuses_a_size_off_the_patch_grid(tiny_transformers):
    from stitchkit.cost.profile import profile_transformers

    import torch

    threads = torch.get_num_threads()
    with pytest.raises(ConfigError, match="^latent size: 15x16 is not divisible by the patch size 2"):
        profile_transformers(*tiny_transformers, latent_height=15, latent_width=16, text_tokens=8,
                             warmup=0, repeats=1, family=SD3)
    with pytest.raises(ConfigError, match="^repeats: 0 is below 1"):
        profile_transformers(*tiny_transformers, latent_height=16, latent_width=16, text_tokens=8, repeats=0,
                             family=SD3)
    assert torch.get_num_threads() == threads


def test_profile_command(monkeypatch, tmp_path, tiny_transformers):
    import stitchkit.pipeline.pairs
    from stitchkit.commands import profile as command_module

    calls = []

    def load_pair_transformers(name):
        calls.append(name)
        return (*tiny_transformers, name)

    monkeypatch.setattr(stitchkit.pipeline.pairs, "load_pair_transformers", load_pair_transformers, raising=False)
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path))
    args = ["--pair", "tiny-random", "--height", "32", "--width", "32", "--vae-scale-factor", "2",
            "--text-tokens", "8", "--ratios", "0.2,0.4", "--warmup", "0", "--repeats", "1", "--threads", "1",
            "--json", "--allow-noisy"]  # this test is about the cache; the noise refusal: tests/test_threads.py
    runner = CliRunner()
    first = runner.invoke(command_module.command, args)
    assert first.exit_code == 0, first.output
    assert calls == ["tiny-random"]
    assert "saved to" in first.output and "masked M=0.4" in first.output
    data = json.loads(first.output.splitlines()[-1])
    assert data["key"]["height"] == 32 and data["source"] == "profile" and len(data["masked_ms"]) == 2
    # The second run reads the cache and loads nothing; --refresh measures again.
    second = runner.invoke(command_module.command, args)
    assert second.exit_code == 0 and calls == ["tiny-random"]
    assert second.output.startswith("cached profile: ")
    assert json.loads(second.output.splitlines()[-1]) == data
    third = runner.invoke(command_module.command, [*args, "--refresh"])
    assert third.exit_code == 0 and calls == ["tiny-random", "tiny-random"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dtype", "float64"],
         "--dtype: 'float64' is not a profiling dtype; one of float32, float16, bfloat16"),
        (["--height", "60"], "--height: 60 is not a multiple of the VAE scale factor 8; "
                             "use a multiple of 8 (of 16 for the pair's patch size 2)"),
        (["--ratios", "0.1,1.2"],
         "--ratios: 1.2 is outside (0, 1); mask ratios lie strictly between 0 and 1"),
        (["--repeats", "0"], "--repeats: 0 is below 1; must be at least 1"),
        (["--device", "toaster"], "--device: 'toaster' is not a device; e.g. cpu, cuda, cuda:1, mps"),
    ],
)
def test_profile_command_refusals(extra, message):
    from stitchkit.commands import profile as command_module

    base = ["--pair", "tiny-random", "--height", "64", "--width", "64"]
    result = CliRunner().invoke(command_module.command, [*base, *extra])  # the last --height wins
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception) == message


def test_cpu_profiles_are_keyed_by_thread_count(tmp_path):
    """A profile taken with one thread must not price a run with two (they differ by up to 2x)."""
    from stitchkit.cost.latency import Costs
    from stitchkit.cost.profile import ProfileKey, load_profile, save_profile

    one = ProfileKey(pair="p", height=64, width=64, dtype="float32", device="cpu", threads=1)
    two = ProfileKey(pair="p", height=64, width=64, dtype="float32", device="cpu", threads=2)
    save_profile(one, Costs(large_ms=10.0, small_ms=3.0), directory=tmp_path)
    assert load_profile(one, directory=tmp_path) is not None
    assert load_profile(two, directory=tmp_path) is None
