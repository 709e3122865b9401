"""One price (issue 24): `plan EXPERIMENT.yaml` and `run --dry-run` set threads as `run` does before they
look the profile up (it is keyed by threads), so a profile cached by a one-thread run is found without
OMP_NUM_THREADS, where torch's default (every core) used to miss it and fall back to a FLOPs estimate."""

import textwrap

import pytest
import torch

from stitchkit.cli import main
from stitchkit.cost.latency import Costs
from stitchkit.cost.profile import ProfileKey, save_profile
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.pair_setup import load_pair, run_size
from stitchkit.experiments.plan import plan_experiment

EXPERIMENT = """
    pair: tiny-random
    sampler: {steps: 4, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle]
    methods: [large, t-stitch]
    output: out
"""


@pytest.fixture
def one_thread_profile(tmp_path, monkeypatch):
    """A cached profile of the tiny pair at one thread (what `run` measures for it), torch left at two."""
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (tmp_path / "e.yaml").write_text(textwrap.dedent(EXPERIMENT))
    config = ExperimentConfig.from_yaml(tmp_path / "e.yaml")
    pipe = load_pair(config)
    size = run_size(pipe, config)
    key = ProfileKey(pair=pipe.pair_id, height=size.height, width=size.width, dtype="float32", device="cpu",
                     batch=2 if size.guided else 1, text_tokens=size.text_tokens, threads=1, frames=0)
    save_profile(key, Costs(large_ms=7.0, small_ms=3.5, source="profile"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield config
    torch.set_num_threads(before)


def test_plan_reads_the_profile_run_reads_without_omp_num_threads(one_thread_profile):
    costs, _ = plan_experiment(one_thread_profile)
    assert costs.source == "profile" and costs.large_ms == 7.0 and torch.get_num_threads() == 1


def test_plan_and_dry_run_commands_say_which_profile_and_threads(one_thread_profile, capsys):
    assert main(["plan", str(one_thread_profile.source)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("costs (profile, 1 thread(s)): Ll = 7,")
    torch.set_num_threads(2)
    assert main(["run", str(one_thread_profile.source), "--dry-run"]) == 0
    assert "(latency model, Eq. 3-6, profiled costs, 1 thread(s))" in capsys.readouterr().out
    assert main(["plan", str(one_thread_profile.source), "--threads", "2"]) == 0  # another key: no profile
    assert "flops-estimate, 2 thread(s)" in capsys.readouterr().out.splitlines()[0]
