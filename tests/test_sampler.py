"""Presets carry the paper's sampler settings (§4.1: 50 steps at 768 × 768)."""

import warnings

import pytest

from stitchkit.registry import get_registry
from stitchkit.sampler import (PAPER_SAMPLER, PresetSamplerWarning, SamplerSettings, largest_size, preset_sampler,
                               resolve_sampler)

PAPER = ("hybridstitch-30", PAPER_SAMPLER)


def _quiet(preset, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        return resolve_sampler(preset, **kwargs)


def test_no_preset_takes_the_defaults_or_the_callers():
    assert _quiet(None, steps=None, height=None, width=None, default_size=64) == SamplerSettings(
        steps=28, height=64, width=64)
    assert _quiet(None, steps=7, height=32, width=48, default_size=64) == SamplerSettings(steps=7, height=32, width=48)


def test_a_paper_preset_runs_the_papers_setting_unless_told_otherwise():
    assert _quiet(PAPER, steps=None, height=None, width=None, default_size=1024) == SamplerSettings(
        steps=50, height=768, width=768)
    assert _quiet(PAPER, steps=50, height=768, width=768, default_size=1024).steps == 50  # said, and the same


def test_overriding_a_paper_preset_warns_one_line_naming_the_papers_setting():
    with pytest.warns(PresetSamplerWarning) as caught:
        ran = resolve_sampler(PAPER, steps=20, height=None, width=None, default_size=1024)
    assert ran == SamplerSettings(steps=20, height=768, width=768)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message
    assert message.startswith("hybridstitch-30: its thresholds are the paper's for 50 steps at 768x768; "
                              "this run uses 20 steps at 768x768")


def test_a_size_the_pair_cannot_take_falls_back_with_the_warning():
    with pytest.warns(PresetSamplerWarning, match=r"this run uses 50 steps at 32x32 \(this pair takes at most 32x32\)"):
        ran = resolve_sampler(PAPER, steps=None, height=None, width=None, default_size=32, max_size=32)
    assert ran == SamplerSettings(steps=50, height=32, width=32)


def test_which_switches_carry_a_sampler():
    registry = get_registry()
    assert preset_sampler(registry, "hybridstitch-30") == PAPER
    assert preset_sampler(registry, {"kind": "fulllarge-10", "thresholds": [0.5, 0.3]})[1] == PAPER_SAMPLER
    assert preset_sampler(registry, "hybridstitch") is None  # the kind itself: no protocol
    assert preset_sampler(registry, "srdiffusion-fastvideo") is None
    assert preset_sampler(registry, object()) is None


def test_largest_size_from_the_position_embedding():
    assert largest_size({"pos_embed_max_size": 16}, 2, 1) == 32
    assert largest_size({"pos_embed_max_size": None}, 2, 8) is None


def test_pipeline_runs_the_presets_steps_and_warns_on_an_override(stitch_pipe):
    args = dict(prompt="a red circle", max_sequence_length=8, output_type="latent", guidance_scale=1.0)
    with pytest.warns(PresetSamplerWarning, match="paper's for 50 steps at 768x768; this run uses 3 steps at 64x64"):
        out = stitch_pipe(**args, switch="hybridstitch-30", num_inference_steps=3, height=64, width=64)
    assert len(out.trace) == 3
    # the caller's steps only: 768² is beyond tiny-random's embedding (32 * patch 2 * VAE 8 = 512): its 128²
    with pytest.warns(PresetSamplerWarning, match=r"uses 2 steps at 128x128 \(this pair takes at most 512x512\)"):
        out = stitch_pipe(**args, switch="hybridstitch-30", num_inference_steps=2)
    assert out.trace[0].num_tokens == (128 // 8 // 2) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(stitch_pipe(**args, switch="large", num_inference_steps=2, height=64, width=64).trace) == 2


def test_shapes_pair_runs_fifty_steps_at_its_own_size():
    from stitchkit.pipeline import StitchPipeline

    pipe = StitchPipeline.from_shapes()
    with pytest.warns(PresetSamplerWarning, match="this run uses 50 steps at 32x32"):
        out = pipe("a red circle", switch="hybridstitch-30", guidance_scale=1.0, output_type="latent")
    assert len(out.trace) == 50


def test_no_preset_warning_when_the_call_sets_the_thresholds(recwarn):
    """Issue 24: `{kind: hybridstitch-30, thresholds: [...]}` chose its own thresholds: the paper's 50 steps
    at 768² stay the defaults, but running other settings is no reason to warn."""
    registry = get_registry()
    own = preset_sampler(registry, {"kind": "hybridstitch-30", "thresholds": [0.15, 0.05]})
    ran = resolve_sampler(own, steps=20, height=None, width=None, default_size=32, max_size=32)
    assert ran == SamplerSettings(steps=20, height=32, width=32)
    assert not [w for w in recwarn if issubclass(w.category, PresetSamplerWarning)]
    with pytest.warns(PresetSamplerWarning):  # the preset's own thresholds still warn
        resolve_sampler(preset_sampler(registry, "hybridstitch-30"), steps=20, height=None, width=None,
                        default_size=32, max_size=32)
