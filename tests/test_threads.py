"""Thread counts: chosen per pair, set before models run, recorded; timing columns warn when the machine
was busy; profiles are sanity-checked before they are cached."""

import json

import pytest
import torch
from click.testing import CliRunner

from stitchkit import ConfigError
from stitchkit.cost.latency import Costs
from stitchkit.cost.profile_checks import check_profile, measure_checked, spread
from stitchkit.cost.threads import apply_threads, default_threads, machine_busy, parse_threads, timing_warnings


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_for_small_models_and_every_core_for_large(monkeypatch):
    from stitchkit.families.sd3.tiny_random import tiny_transformer

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_threads(tiny_transformer(num_layers=1, heads=2, seed=0)) == 1
    big = torch.nn.Linear(5000, 5000, device="meta")  # 25 M parameters, above SMALL_MODEL_PARAMS
    assert default_threads(big) == 8


def test_apply_threads_order_of_precedence(monkeypatch, restore_threads):
    big = torch.nn.Linear(5000, 5000, device="meta")
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert apply_threads(2, big) == 2 and torch.get_num_threads() == 2  # an explicit count wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert apply_threads(None, big) == 1 and torch.get_num_threads() == 1  # then the user's environment
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert apply_threads(None, big) == 3 and torch.get_num_threads() == 3  # then the pair's default
    assert apply_threads(None, big, device="cuda") == 0  # threads do not matter on a GPU


@pytest.mark.parametrize("value, message", [
    ("two", "--threads: 'two' is not a whole number; give a thread count >= 1"),
    ("0", "--threads: '0' is not a thread count; give a whole number >= 1"),
])
def test_parse_threads_refusals(value, message):
    assert parse_threads("") is None and parse_threads("3") == 3
    with pytest.raises(ConfigError) as err:
        parse_threads(value)
    assert str(err.value) == message


def test_machine_busy_reads_the_load_average(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0))
    assert machine_busy(1, cores=2) is None
    monkeypatch.setattr("os.getloadavg", lambda: (5.0, 1.0, 1.0))
    assert "busy (load 5.0 on 2 cores" in machine_busy(2, cores=2)


def _record(load, predicted=100.0, measured=100.0):
    return {"load": load, "threads": 1, "predicted_denoise_ms": predicted, "denoise_ms": measured}


def test_timing_warnings():
    quiet = {"large": [_record(0.9), _record(1.1)], "small": [_record(1.0, 40.0, 41.0)]}
    assert timing_warnings(quiet, cores=2) == []
    busy = {"large": [_record(0.9), _record(4.6)], "small": [_record(1.0)]}
    (line,) = timing_warnings(busy, cores=2)
    assert line.startswith("warning: 1 of 3 images were timed while the machine was busy (load up to 4.6 on 2")
    off = {"large": [_record(1.0, 400.0, 100.0), _record(1.0, 390.0, 100.0)]}
    (line,) = timing_warnings(off, cores=2)
    assert "misses the measured time by 295 % (median)" in line and "--refresh" in line


def test_spread_leaves_out_one_extreme_call_at_each_end():
    assert spread([10.0]) == 0.0
    assert spread([10.0, 12.0]) == pytest.approx(2.0 / 11.0)
    assert spread([1.0, 10.0, 10.0, 11.0, 100.0]) == pytest.approx(0.1)


def test_check_profile_finds_a_falling_masked_cost_and_disagreeing_repeats():
    good = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.1, 3.0), (0.3, 2.9), (0.5, 6.0)])
    assert check_profile(good, {"large": [10.0, 10.5, 9.8]}) == []  # 3 % down is timer noise
    bad = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.1, 3.0), (0.3, 2.0)])
    assert check_profile(bad) == ["masked cost falls from 3 ms at M=0.1 to 2 ms at M=0.3"]
    assert check_profile(good, {"small": [3.0, 9.0]}) == [
        "repeated small timings disagree (spread 100 % of the median)"]


def test_measure_checked_measures_again_then_gives_up():
    noisy = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.1, 5.0), (0.3, 2.0)])
    clean = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.1, 2.0), (0.3, 5.0)])
    results = iter([noisy, clean])
    costs, problems = measure_checked(lambda timings: next(results))
    assert costs is clean and problems == []
    calls = []
    costs, problems = measure_checked(lambda timings: calls.append(1) or noisy, attempts=3)
    assert len(calls) == 3 and problems and costs is noisy


def _fake_pair(monkeypatch, costs):
    """The profile command on a pair whose every measurement gives ``costs``."""
    import stitchkit.pipeline.pairs
    from stitchkit.commands import profile as module

    monkeypatch.setattr(stitchkit.pipeline.pairs, "load_pair_transformers", lambda name: (None, None, name), raising=False)
    calls = []
    monkeypatch.setattr(module, "profile_transformers", lambda *a, **kw: calls.append(1) or costs)
    return module.command, calls


def test_profile_command_refuses_to_cache_a_noisy_profile(monkeypatch, tmp_path):
    from stitchkit.cost.profile import ProfileKey, load_profile

    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path))
    noisy = Costs(large_ms=10.0, small_ms=3.0, masked_ms=[(0.2, 6.0), (0.4, 2.0)], source="profile")
    command, calls = _fake_pair(monkeypatch, noisy)
    # The fake pair "p" has no pipeline to read its VAE factor and text length from: given explicitly.
    args = ["--pair", "p", "--height", "64", "--width", "64", "--ratios", "0.2,0.4", "--threads", "1", "--json",
            "--vae-scale-factor", "8", "--text-tokens", "333"]
    result = CliRunner().invoke(command, args)
    assert isinstance(result.exception, ConfigError) and len(calls) == 3  # measured three times, then refused
    message = str(result.exception)
    assert message.startswith("profile: masked cost falls from 6 ms at M=0.2 to 2 ms at M=0.4 after 3 attempts")
    assert "--allow-noisy" in message and "\n" not in message
    key = ProfileKey(pair="p", height=64, width=64, dtype="float32", device="cpu", threads=1)
    assert load_profile(key) is None
    kept = CliRunner().invoke(command, [*args, "--allow-noisy"])
    assert kept.exit_code == 0 and load_profile(key) == noisy
    assert json.loads(kept.output.splitlines()[-1])["key"]["threads"] == 1


def test_run_sets_sampler_threads_before_models_run_and_records_them(tmp_path, restore_threads, monkeypatch):
    """sampler.threads wins over OMP_NUM_THREADS (one thread here: the suite must not spin on a busy machine)."""
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.runner import run_experiment

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(2)
    config = ExperimentConfig.from_dict({
        "pair": "tiny-random", "prompts": ["a dog"], "methods": ["large"], "output": str(tmp_path / "out"),
        "sampler": {"steps": 2, "height": 64, "width": 64, "max_sequence_length": 8, "threads": 1}})
    out = run_experiment(config, progress=False)
    record = json.loads((out / "records" / "large" / "p0000-s0.json").read_text())
    assert record["threads"] == 1 and torch.get_num_threads() == 1
    with pytest.raises(ConfigError, match=r"^sampler\.threads: "):
        ExperimentConfig.from_dict({"prompts": ["a"], "methods": ["large"], "sampler": {"threads": 0}})


def test_a_stitch_pipeline_call_runs_with_the_threads_the_cli_would_choose(monkeypatch, restore_threads):
    """Issue 24: the Python API leaves no call on torch's default threads. The shapes pair's call runs with
    what `stitchkit run` chooses for it (apply_threads with no --threads: OMP_NUM_THREADS, else the pair's
    default), torch's setting comes back afterwards, and `pipe.threads` overrides it."""
    from stitchkit import StitchPipeline

    pipe = StitchPipeline.from_shapes()
    seen = []

    def record(step):
        seen.append(torch.get_num_threads())

    def call():
        seen.clear()
        pipe("a small red circle at the top left on a blue background", num_inference_steps=2,
             guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="latent", callback=record)
        return set(seen)

    for env, expected in (("", 1), ("3", 3)):  # unset: the pair's default (shapes: 3.5 M parameters)
        monkeypatch.setenv("OMP_NUM_THREADS", env)
        torch.set_num_threads(2)
        cli = apply_threads(None, pipe.adapter.large_transformer, pipe.small)  # what the CLI would set
        torch.set_num_threads(2)
        assert call() == {cli} == {expected} and torch.get_num_threads() == 2
    pipe.threads = 2
    assert call() == {2}
    pipe.threads = None
    torch.set_num_threads(3)
    assert call() == {3}
