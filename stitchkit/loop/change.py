"""The change ``D_t`` between denoising steps (Eq. 9-10) and the per-token change map, as swappable measures.

The paper is ambiguous about what ``D_t`` compares, and the choice decides when a policy switches:

* ``"x0"``: Eq. 9 with Eq. 10. ``X_t = Latent_t - sigma * noise_t`` is, for flow matching, exactly the
  model's prediction of the clean image, ``x0 = x - sigma * v``; ``D_t`` is the relative L1 distance of two
  consecutive x0 predictions. This is the only reading under which the paper's thresholds (0.25-0.6) are
  crossed in the middle of a 50-step run.
* ``"latent"``: Algorithm 1, line 19: ``diff = prev_latent - latent``, the relative L1 distance of the
  latents before and after the scheduler step. It needs no earlier step, but for an Euler step it is about
  ``|sigma_next - sigma| * |v| / |x|``, i.e. tiny from the start.
* ``"x0-prev"``: the same x0 difference over the *older* x0, ``mean|X_t - X_{t+1}| / mean|X_{t+1}|``: what
  the FastVideo re-implementation of SRDiffusion's switch compares (``rule="fastvideo"`` of
  :mod:`stitchkit.policies.srdiffusion`, which cites the lines).
* ``"output"``: the relative L1 distance of consecutive (guided) model outputs over the older one. The
  xDiT re-implementation of SRDiffusion compares raw transformer outputs this way (there is no official
  SRDiffusion code; under CFG xDiT compares single calls, which this per-step measure does not: see
  ``rule="xdit"``).

A measure is a function ``(prev, cur, patch_size) -> (change, change_map)`` over two :class:`StepTensors`
(``prev`` is ``None`` at the first step). ``change`` is ``D_t`` per sample, shape ``(B,)`` float32;
``change_map`` is ``mean |ΔX|`` over the channels and each token's ``p×p`` patch, shape ``(B, N)``, in the
row-major token order of SD3's patch embedding. A measure that needs the previous step returns
``(None, None)`` when there is none.

Example::

    >>> import torch
    >>> x = torch.ones(1, 2, 4, 4)
    >>> prev = StepTensors.from_step(x, x, torch.zeros_like(x), sigma=1.0)
    >>> cur = StepTensors.from_step(x, x, torch.ones_like(x) * 0.5, sigma=1.0)
    >>> change, change_map = measure("x0")(prev, cur, 2)
    >>> change.tolist(), change_map.shape
    ([1.0], torch.Size([1, 4]))
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch
import torch.nn.functional as F

from stitchkit.protocols import CHANGE_MEASURES, check_measure_name
from stitchkit.tokens import patch_tuple

__all__ = [
    "MEASURES",
    "Measure",
    "StepTensors",
    "change_map",
    "measure",
    "measure_names",
    "relative_l1",
]


@attrs.frozen
class StepTensors:
    """What one denoising step leaves behind, all shaped ``(B, C, H, W)`` (CFG already applied).

    ``latents`` went into the models, ``next_latents`` came out of the scheduler step, ``output`` is the
    guided (and, in a hybrid step, stitched) model prediction, and ``x0 = latents - sigma * output``.
    """

    latents: torch.Tensor
    next_latents: torch.Tensor
    output: torch.Tensor
    x0: torch.Tensor
    #: In a hybrid step, the small model's own (guided, unstitched) x0 prediction; ``None`` otherwise.
    small_x0: torch.Tensor | None = None
    #: The scheduler's own ``sigmas[i + 1] - sigmas[i]`` (a 0-d tensor in the scheduler's dtype), where the
    #: loop knows it: RAS ranks ``sigma_step * output`` (see :func:`_latent_std`).
    sigma_step: torch.Tensor | None = None
    #: The small model's own (guided) output where it ran beside the large one or as its corrector.
    small_output: torch.Tensor | None = None

    @classmethod
    def from_step(
        cls, latents: torch.Tensor, next_latents: torch.Tensor, output: torch.Tensor, sigma: float,
        small_output: torch.Tensor | None = None, sigma_step: torch.Tensor | None = None,
    ) -> "StepTensors":
        """Build one from a flow-matching step, computing ``x0 = latents - sigma * output`` (Eq. 10)."""
        small_x0 = None if small_output is None else latents - sigma * small_output
        return cls(latents, next_latents, output, latents - sigma * output, small_x0, sigma_step, small_output)


#: ``(prev, cur, patch_size) -> (change (B,), change_map (B, N))``, or ``(None, None)`` without ``prev``.
Measure = Callable[
    ["StepTensors | None", StepTensors, int], "tuple[torch.Tensor | None, torch.Tensor | None]"
]


def relative_l1(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``mean|delta| / mean|reference|`` per sample, float32, shape ``(B,)``.

    A zero reference gives ``0`` for a zero delta and a very large number otherwise (the denominator is
    clamped to the smallest normal float32), never NaN.
    """
    num = delta.detach().float().abs().flatten(1).mean(dim=1)
    den = reference.detach().float().abs().flatten(1).mean(dim=1)
    return num / den.clamp_min(torch.finfo(torch.float32).tiny)


def change_map(delta: torch.Tensor, patch_size: "int | tuple[int, ...]") -> torch.Tensor:
    """Per-token ``mean |delta|`` over channels and each patch: ``(B, C, H, W) -> (B, H/p * W/p)``, and for a
    video ``(B, C, F, H, W)`` with patch ``(p_t, p_h, p_w)`` -> ``(B, F/p_t * H/p_h * W/p_w)``.

    Tokens are in row-major order over the token grid (frame, row, column), as the transformers' patch
    embeddings lay them out (:mod:`stitchkit.tokens`).
    """

    if delta.ndim not in (4, 5):
        raise ValueError(f"change_map expects (B, C, H, W) or (B, C, F, H, W), got shape {tuple(delta.shape)}")
    spatial = delta.shape[2:]
    patch = patch_tuple(patch_size, len(spatial))
    if min(patch) < 1 or any(s % q for s, q in zip(spatial, patch)):
        size = "x".join(map(str, spatial))
        given = str(patch_size) if isinstance(patch_size, int) else "x".join(map(str, patch))
        raise ValueError(f"latent size {size} is not divisible by patch size {given}")
    per_pixel = delta.detach().float().abs().mean(dim=1, keepdim=True)
    pool = F.avg_pool2d if delta.ndim == 4 else F.avg_pool3d
    return pool(per_pixel, kernel_size=patch, stride=patch).flatten(1)


def _x0(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """Eq. 9 with Eq. 10: relative L1 of consecutive x0 predictions, ``mean|X_t - X_{t+1}| / mean|X_t|``.

    Timesteps count down, so ``X_{t+1}`` is the previous step's x0 and ``X_t`` (the denominator) this one's.
    """
    if prev is None:
        return None, None
    delta = cur.x0 - prev.x0
    return relative_l1(delta, cur.x0), change_map(delta, patch_size)


def _latent(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """Algorithm 1, line 19: relative L1 of the latents around this step, ``|next - latents| / |next|``."""
    delta = cur.next_latents - cur.latents
    return relative_l1(delta, cur.next_latents), change_map(delta, patch_size)


def _x0_prev(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """Consecutive x0 predictions over the older one, ``mean|X_t - X_{t+1}| / mean|X_{t+1}|`` (FastVideo's
    SRDiffusion measure, before its ``tanh``)."""
    if prev is None:
        return None, None
    delta = cur.x0 - prev.x0
    return relative_l1(delta, prev.x0), change_map(delta, patch_size)


def _output(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """Consecutive (guided) model outputs over the older one, ``|out_t - out_{t-1}| / |out_{t-1}|``."""
    if prev is None:
        return None, None
    delta = cur.output - prev.output
    return relative_l1(delta, prev.output), change_map(delta, patch_size)


def _small_x0(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """``x0``'s D_t (Eq. 9-10, so the thresholds mean the same), with the per-token map taken from the small
    model's own x0 predictions when two consecutive hybrid steps have them.

    Why (issue 15, item 5): in a hybrid stage the stitched x0 of a token comes from the large model when it
    was masked and from the small one otherwise, so ``|ΔX|`` of the stitched x0 is largest where the *source*
    of a token changed between steps; top-k then chases its own last mask, alternating between the objects
    and the background from step to step (on the shapes pair 13 % and 55 % of a 30 % mask on the objects at
    consecutive steps). The small model runs on every token of every hybrid step, so its own x0 is one
    consistent source: its change is where the small model is still redrawing the image. At the first
    hybrid step the reference is the large step's x0 (small-vs-large disagreement); outside hybrid steps
    the map is ``x0``'s.
    """
    change, stitched_map = _x0(prev, cur, patch_size)
    if prev is None or cur.small_x0 is None:
        return change, stitched_map
    # After a full large step (prev.small_x0 is None) the small model's x0 is compared with the large one's:
    # their disagreement, the map of the paper's Fig. 1b.
    reference = prev.small_x0 if prev.small_x0 is not None else prev.x0
    return change, change_map(cur.small_x0 - reference, patch_size)


def _latent_std(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """RAS's ranking (microsoft/RAS a9c5ec8, ``src/ras/schedulers/ras_scheduling_flow_match_euler_discrete.py``
    lines 105-106 and 201): per token, the standard deviation over channels of the scheduler's own step
    ``diff = (sigma_next - sigma) * model_output``, computed as RAS computes it (the scheduler's 0-d sigma
    difference times the guided output, in the output's dtype), averaged over the token's patch. Not the
    rounded ``next - latents``: in bf16 that differs (``prev_sample`` is upcast, summed and cast back, lines 203-205).
    Without the scheduler's sigmas (``sigma_step`` unset) it falls back to ``next - latents``.
    ``D_t`` as :func:`_latent`."""

    moved = (cur.next_latents - cur.latents).detach().float()  # D_t's latent step, as before
    if moved.ndim != 4:
        raise ValueError("the latent-std measure (RAS) is defined for images (B, C, H, W)")
    ranked = moved if cur.sigma_step is None else (cur.sigma_step * cur.output).detach()
    per_pixel = ranked.std(dim=1, keepdim=True, correction=1 if ranked.shape[1] > 1 else 0).float()  # 1 channel: 0
    patch = patch_tuple(patch_size, 2)
    return relative_l1(moved, cur.next_latents), F.avg_pool2d(per_pixel, kernel_size=patch, stride=patch).flatten(1)


#: Every change measure by name. Policies name theirs in ``change_measure``.
def _small_output(prev: StepTensors | None, cur: StepTensors, patch_size: int):
    """Consecutive outputs of the *small* model over the older one, ``|S_t - S_{t-1}| / |S_{t-1}|``, where
    both steps ran it beside the large one or as its corrector; elsewhere the step's own output (in a
    small-only step that is the small model's). What the small-corrector policy accumulates (issue 21): the
    small model runs every step there, so its own change since the last large step stands for the large
    model's, as MagCache's calibrated magnitude ratios do for a cache that has no second model."""
    if prev is None:
        return None, None
    old = prev.small_output if prev.small_output is not None else prev.output
    new = cur.small_output if cur.small_output is not None else cur.output
    delta = new - old
    return relative_l1(delta, old), change_map(delta, patch_size)


MEASURES: dict[str, Measure] = {"x0": _x0, "x0-prev": _x0_prev, "latent": _latent, "output": _output,
                                "small-x0": _small_x0, "latent-std": _latent_std, "small-output": _small_output}
assert set(MEASURES) == set(CHANGE_MEASURES), "stitchkit.protocols.CHANGE_MEASURES names every measure"


def measure_names() -> tuple[str, ...]:
    """The known change measures' names, sorted."""
    return tuple(sorted(MEASURES))


def measure(name: str, path: str = "change") -> Measure:
    """The measure called ``name``; unknown: a :class:`ConfigError` at ``path`` naming the known ones."""
    return MEASURES[check_measure_name(name, path)]
