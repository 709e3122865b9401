"""The example outside package in plugins/ loads through its entry point and runs from the API and YAML,
with no change to stitchkit: it is pip-installed into a temporary folder put on sys.path."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stitchkit.registry import get_registry

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "stitchkit-sandwich"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(PLUGIN, source)  # pip builds in the source folder: keep the checkout clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("stitchkit_sandwich", None)


def test_entry_point_registers_the_policy(installed, monkeypatch):
    registry = get_registry()
    entry = registry.entry("switch", "sandwich")
    assert entry.origin == "stitchkit-sandwich (entry point sandwich)"
    assert dict(entry.parameters()) == {"head": 0.3, "tail": 0.2}
    monkeypatch.setenv("STITCHKIT_PLUGINS", "")
    assert "sandwich" not in get_registry().names("switch")


def test_runs_from_the_api(installed, tiny_pair):
    from stitchkit import StitchPipeline

    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=large, small=small)
    out = pipe("a cat", height=64, width=64, num_inference_steps=10, max_sequence_length=8,
               output_type="latent", switch={"kind": "sandwich", "head": 0.2, "tail": 0.3})
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]


def test_reuse_every_takes_an_outside_inner_policy(installed, tiny_pair):
    """reuse-every builds its ``inner`` with the registry that builds it (handed in), so an entry point's
    policy composes as a built-in does; it once built a registry of its own without entry points."""
    from stitchkit import StitchPipeline

    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=large, small=small)
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=10, max_sequence_length=8,
                output_type="latent")
    inner = {"kind": "sandwich", "head": 0.2, "tail": 0.3}
    alone = pipe(**args, switch=inner)
    out = pipe(**args, switch={"kind": "reuse-every", "inner": inner, "every": 2, "from_stage": 1})
    assert [r.stage for r in out.trace] == [r.stage for r in alone.trace] == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    reused = [r.step for r in out.trace if r.reused_tokens == r.num_tokens]
    assert reused == [3, 5, 8]  # every 2nd step of stages 1 and 2, each stage's first step computed


def test_runs_from_yaml(installed, tmp_path):
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.runner import run_experiment

    exp = tmp_path / "e.yaml"
    exp.write_text(textwrap.dedent("""
        sampler: {steps: 5, height: 64, width: 64, max_sequence_length: 8}
        prompts: [a dog]
        methods: [large, sandwich-thin]
        output: out
    """))
    out = run_experiment(ExperimentConfig.from_yaml(exp), progress=False)
    assert "| sandwich-thin | 1 |" in (out / "results.md").read_text()


def test_mask_policy_registers_through_the_entry_point(installed):
    entry = get_registry().entry("mask", "ema-top-k")
    assert entry.origin == "stitchkit-sandwich (entry point sandwich)"
    assert dict(entry.parameters()) == {"decay": 0.5}


def test_mask_policy_keeps_state_between_steps_and_resets(installed):
    """decay 0.5: the second mask ranks the running average, not the last map alone."""
    import torch

    from stitchkit.protocols import LoopState

    policy, _ = get_registry().create("mask", {"kind": "ema-top-k", "decay": 0.5})

    def state(values):
        return LoopState(step=0, num_steps=4, timestep=1.0, sigma=1.0, num_tokens=4, grid=(2, 2),
                         batch_size=1, change_map=torch.tensor([values]))

    assert policy.select(state([9.0, 0.0, 0.0, 1.0]), 0.25).tolist() == [[0]]
    assert policy.select(state([0.0, 2.0, 0.0, 0.0]), 0.25).tolist() == [[0]]  # averages 4.5 against 1.0
    policy.reset()
    assert policy.select(state([0.0, 2.0, 0.0, 0.0]), 0.25).tolist() == [[1]]


def test_mask_policy_passes_the_shipped_state_machine(installed):
    from hypothesis import HealthCheck, settings

    from stitchkit.testing import mask_policy_machine

    machine = mask_policy_machine(lambda: get_registry(entry_points=True).create("mask", "ema-top-k")[0])
    machine.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None,
                                         suppress_health_check=list(HealthCheck))
    machine.TestCase("runTest").runTest()


def test_mask_policy_runs_from_the_api(installed, tiny_pair):
    from stitchkit import StitchPipeline

    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=large, small=small)
    switch = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.25]}
    masks = []
    out = pipe("a cat", height=64, width=64, num_inference_steps=5, max_sequence_length=8, output_type="latent",
               switch=switch, mask="ema-top-k", allow_unprofitable=True,
               callback=lambda step: masks.append(step["indices"]))
    hybrid = [m for m in masks if m is not None]
    assert [r.stage for r in out.trace] == [0, 0, 1, 1, 1] and len(hybrid) == 3
    assert all(m.shape == (1, 4) for m in hybrid)  # 25 % of 16 tokens
