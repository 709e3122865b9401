"""Sampler settings that come with a preset: the paper's protocol as data.

D_t (Eq. 9-10) is measured per step, so a threshold means something only at the step count (and, through
the latent size, the resolution) it was chosen for: on the shapes pair the same thresholds switch at 70 % of
20 steps and 82 % of 50. The paper's presets (§4.1: "We set the denoising step number as 50 by default ...
The default resolution of our evaluation is 768 × 768") therefore carry ``sampler: {steps: 50, height: 768,
width: 768}``. A call that does not give ``num_inference_steps`` / ``height`` / ``width`` runs the preset's;
a call that gives other values runs those, with one :class:`PresetSamplerWarning` line naming the paper's
setting. A size the pair cannot take (its position embedding is smaller) falls back to the pair's default
size, also with the warning.

This module is the only place that knows about it, so the pipeline's ``__call__`` needs one call,
:func:`resolve_sampler`, and nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import attrs

#: §4.1: 50 denoising steps at 768 × 768.
PAPER_SAMPLER: dict[str, int] = {"steps": 50, "height": 768, "width": 768}
#: What ``num_inference_steps`` is when neither the caller nor a preset sets it (diffusers' SD3 default).
DEFAULT_STEPS = 28


class PresetSamplerWarning(UserWarning):
    """A run with a preset that carries sampler settings uses other ones."""


#: Switch parameters that carry the paper's protocol: a call that sets one chose its own thresholds, so
#: running at another step count or size than the paper's is no reason to warn (issue 24).
THRESHOLD_KEYS = ("thresholds", "threshold")


class PresetSampler(tuple):
    """``(preset name, its sampler settings)``; ``own_thresholds``: the call set the preset's thresholds
    itself (``{kind: hybridstitch-30, thresholds: [...]}``), so the paper's settings are defaults only."""

    own_thresholds: bool = False


@attrs.frozen(kw_only=True)
class SamplerSettings:
    """What one generation runs with."""

    steps: int
    height: int
    width: int

    def describe(self) -> str:
        return f"{self.steps} steps at {self.height}x{self.width}"


def preset_sampler(registry, switch: Any) -> tuple[str, Mapping[str, int]] | None:
    """``(preset name, its sampler settings)`` when ``switch`` names a preset that carries them."""
    if isinstance(switch, str):
        name = switch
    elif isinstance(switch, Mapping) and isinstance(switch.get("kind"), str):
        name = switch["kind"]
    else:
        return None  # a policy object: it carries no protocol
    entry = registry.entries["switch"].get(name)
    sampler = None if entry is None else entry.params.get("sampler")
    if not sampler:
        return None
    found = PresetSampler((name, sampler))
    found.own_thresholds = isinstance(switch, Mapping) and any(k in switch for k in THRESHOLD_KEYS)
    return found


def resolve_sampler(preset: tuple[str, Mapping[str, int]] | None, *, steps: int | None, height: int | None,
                    width: int | None, default_size: int | tuple[int, int],
                    max_size: int | None = None) -> SamplerSettings:
    """The settings a generation runs with: the caller's, else the preset's, else the defaults.

    ``default_size``: the pair's default side, or ``(height, width)`` for a family whose default is not square.

    Warns once (one line) when a preset's settings are not what runs: the caller gave others, or the
    preset's size is beyond ``max_size`` (the largest the pair can take; ``None``: no limit); never when
    the caller set the preset's thresholds (:attr:`PresetSampler.own_thresholds`).
    """
    default_height, default_width = default_size if isinstance(default_size, tuple) else (default_size,) * 2
    if preset is None:
        return SamplerSettings(steps=steps or DEFAULT_STEPS, height=height or default_height,
                               width=width or default_width)
    name, wanted = preset
    paper = SamplerSettings(steps=wanted.get("steps") or steps or DEFAULT_STEPS,
                            height=wanted.get("height") or height or default_height,
                            width=wanted.get("width") or width or default_width)
    size_fits = max_size is None or max(paper.height, paper.width) <= max_size
    ran = SamplerSettings(
        steps=steps or paper.steps,
        height=height or (paper.height if size_fits else default_height),
        width=width or (paper.width if size_fits else default_width),
    )
    if ran != paper and not getattr(preset, "own_thresholds", False):
        why = "" if size_fits or (height and width) else f" (this pair takes at most {max_size}x{max_size})"
        warnings.warn(
            f"{name}: its thresholds are the paper's for {paper.describe()}; this run uses {ran.describe()}"
            f"{why}, so it may switch elsewhere (stitchkit calibrate finds this setting's thresholds)",
            PresetSamplerWarning, stacklevel=2)
    return ran


def largest_size(transformer_config: Any, patch_size: int, vae_scale_factor: int) -> int | None:
    """The largest image side a transformer's position embedding covers (``None``: unbounded)."""
    cropped = getattr(transformer_config, "pos_embed_max_size", None)
    if cropped is None and isinstance(transformer_config, Mapping):
        cropped = transformer_config.get("pos_embed_max_size")
    return None if cropped is None else int(cropped) * patch_size * vae_scale_factor
