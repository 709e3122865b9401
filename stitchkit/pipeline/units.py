"""Generate several units of one method in one batch, each with its own image, trace and masks.

An experiment's unit is one (method, prompt, seed). Since decisions are per sample (``stitchkit.loop.per_sample``),
a unit's image and trace do not depend on which units share its batch, so units of one method can be
generated ``k`` at a time (one batched denoising loop) and recorded, and resumed, one by one:

    >>> units = generate_units(pipe, ["a red circle", "a blue square"], [0, 1], switch="hybridstitch-30",
    ...                        num_inference_steps=20, guidance_scale=4.0)              # doctest: +SKIP
    >>> units[1].image, units[1].trace[-1].stage, units[1].masks["steps"][:1]             # doctest: +SKIP

Each seed seeds its own CPU generator (diffusers' convention for a list of generators), so unit ``b``
starts from the very latents it would get alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from stitchkit.errors import ConfigError
from stitchkit.loop.trace import StepRecord
from stitchkit.tokens import token_grid


@attrs.frozen(kw_only=True)
class UnitOutput:
    """One unit of a batch: its ``image`` (as ``output_type`` gives it), its ``trace`` (its own stages and
    tokens; ``large_ms``/``small_ms`` its share of the batched calls), the ``masks`` its hybrid steps used
    (``{"grid": [h, w] or [frames, h, w], "steps": [[step, [token, ...]], ...]}``), and ``latency_ms``, its share of the
    batch's wall time (the batch's time over its size)."""

    image: Any
    trace: tuple[StepRecord, ...]
    masks: dict[str, Any]
    latency_ms: float


def mask_grid(pipe, latents) -> list[int]:
    """The token grid of ``latents``: ``[rows, columns]``, or ``[frames, rows, columns]`` for a video."""

    return list(token_grid(latents.shape[2:], pipe.adapter.patch_size))


def generate_units(pipe, prompts: Sequence[str], seeds: Sequence[int], *, switch: Any, mask: Any = None,
                   context: Any = None, output_type: str = "pil", **call_kwargs: Any) -> tuple[UnitOutput, ...]:
    """Generate ``len(prompts)`` units in one batch with ``pipe`` (a :class:`~stitchkit.StitchPipeline`):
    unit ``b`` is ``prompts[b]`` from ``seeds[b]``. ``call_kwargs`` go to the pipeline call (height, width,
    num_inference_steps, guidance_scale, negative_prompt, max_sequence_length, allow_unprofitable, ...)."""
    if len(prompts) != len(seeds) or not prompts:
        raise ConfigError("prompts", f"{len(prompts)} prompts for {len(seeds)} seeds",
                          "give one seed per prompt, at least one of each")
    k = len(prompts)
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    masks: list[dict[str, Any]] = [{"grid": None, "steps": []} for _ in range(k)]

    def keep_masks(step: dict) -> None:  # the tokens the large model recomputed, per unit
        grid = mask_grid(pipe, step["latents"])
        for b, indices in enumerate(step["sample_indices"]):
            if indices is not None:
                masks[b]["grid"] = grid
                masks[b]["steps"].append([step["step"], indices[0].tolist()])

    start = time.perf_counter()
    out = pipe(list(prompts), generator=generators, output_type=output_type, switch=switch, mask=mask,
               context=context, callback=keep_masks, **call_kwargs)
    total_ms = (time.perf_counter() - start) * 1000.0
    return tuple(UnitOutput(image=out.images[b], trace=out.traces[b], masks=masks[b], latency_ms=total_ms / k)
                 for b in range(k))
