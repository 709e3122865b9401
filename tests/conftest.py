"""Shared fixtures: the tiny-random pair, built once per session (seeded, offline)."""

import os

import pytest
import torch

# One thread for the suite and for every subprocess a test starts (the CLI tests run `stitchkit run`):
# torch's default, a spinning OpenMP thread per core, made those time out on a busy machine (issue 15).
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def profile_cache(tmp_path_factory, monkeypatch):
    """Profiles measured by tests go to a per-session folder, never to the user's cache."""
    monkeypatch.setenv("STITCHKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_pair():
    """(large StableDiffusion3Pipeline, small SD3Transformer2DModel), float32 on CPU."""
    from stitchkit.families.sd3.tiny_random import build_tiny_random_pair

    torch.set_num_threads(1)
    return build_tiny_random_pair(seed=0)


@pytest.fixture(scope="session")
def stitch_pipe(tiny_pair):
    from stitchkit import StitchPipeline

    large, small = tiny_pair
    return StitchPipeline.from_pipelines(large=large, small=small)
