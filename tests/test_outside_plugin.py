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
