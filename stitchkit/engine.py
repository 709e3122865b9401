"""The denoising loop: the paper's Algorithm 1, with every decision delegated to policies.

Per step (Algorithm 1's line numbers in brackets):

1. the switch policy decides which models run, having seen the last step's change D_t        [lines 4-17, 20-22]
2. in a hybrid step the mask policy picks the tokens the large model recomputes                [line 23]
3. the large model runs (all tokens, or the masked ones with the context provider's K/V)       [lines 6, 10]
4. the small model runs on all tokens; the large model's tokens are stitched into its output    [lines 11-12]
5. classifier-free guidance, then ``scheduler.step`` exactly once                              [line 18]
6. the change D_t (Eq. 9-10) and its per-token map are measured for the next decision          [line 19]
7. a trace record, and the caller's callback.

A batch has one stage at a time (the switch policy sees every sample's D_t and, for the built-ins, moves
on only when all are below the threshold); masks are per sample, and both CFG halves of a sample share it.
There is no method-specific branch here: a new method is a new policy.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs
import torch

from stitchkit.change import MEASURES, StepTensors
from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.models.sd3_masked import CudaGraphs, cuda_graphs_enabled, plain_forward
from stitchkit.models.tokens import stitch
from stitchkit.protocol_checks import check_decision, check_indices
from stitchkit.protocols import ContextProvider, Decision, LoopState, MaskPolicy, ModelInputs, SwitchPolicy
from stitchkit.trace import StepRecord

StepCallback = Callable[[dict[str, Any]], None]
#: ``(step, timestep, latents, prompt_embeds, pooled_projections) -> the same three``, after the scheduler
#: step: diffusers' ``callback_on_step_end``, which may replace them (see stitchkit.diffusers_compat).
StepEndHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                       tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@attrs.frozen(kw_only=True)
class Policies:
    """The three plugins one generation runs with."""

    switch: SwitchPolicy
    mask: MaskPolicy
    context: ContextProvider


@attrs.frozen(kw_only=True)
class Models:
    """The large transformer (plain and wrapped for masked forwards) and the small one."""

    large: torch.nn.Module
    masked_large: Any  # stitchkit.models.sd3_masked.MaskedTransformer
    small: torch.nn.Module
    patch_size: int


class _Timer:
    """Wall time of one model call in ms, synchronizing the device first so GPU work is counted."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.ms = 0.0

    def __enter__(self) -> "_Timer":
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.ms += (time.perf_counter() - self.start) * 1000.0


def small_forward_fn(model: torch.nn.Module, device: torch.device):
    """The small model's forward; on CUDA replayed from a graph: at the paper's sizes SD3 Medium's step is
    partly bound by kernel launches once the GPU has idled between calls."""
    if device.type != "cuda" or not cuda_graphs_enabled():
        return lambda inputs: plain_forward(model, inputs)
    graphs = CudaGraphs(lambda x, t, e, p: plain_forward(model, ModelInputs(
        hidden_states=x, timestep=t, encoder_hidden_states=e, pooled_projections=p)))
    return lambda inputs: graphs(inputs.hidden_states, inputs.timestep, inputs.encoder_hidden_states,
                                 inputs.pooled_projections)


def _check_finite(x: torch.Tensor, step: int, model: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(step, model)
    return x


@torch.no_grad()
def denoise(
    *,
    models: Models,
    policies: Policies,
    scheduler,
    timesteps: torch.Tensor,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_projections: torch.Tensor,
    guidance_scale: float,
    callback: StepCallback | None = None,
    progress: bool = False,
    step_end: StepEndHook | None = None,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """Run the loop from ``latents`` over ``timesteps``; return the final latents and one record per step.

    ``prompt_embeds``/``pooled_projections`` hold [uncond, cond] halves when ``guidance_scale > 1``.
    The scheduler must be freshly set to ``timesteps`` (its step index at the start).
    """
    from tqdm.auto import tqdm

    switch, mask, context = policies.switch, policies.mask, policies.context
    guided = guidance_scale > 1.0
    batch = latents.shape[0]
    p = models.patch_size
    grid = (latents.shape[-2] // p, latents.shape[-1] // p)
    num_tokens = grid[0] * grid[1]
    measure = MEASURES[switch.change_measure]
    # A policy that never masks needs no K/V recording: its large steps are the stock forward.
    may_mask = getattr(switch, "may_mask", True)
    small_forward = small_forward_fn(models.small, latents.device)

    switch.reset(len(timesteps))
    mask.reset()
    context.reset()
    trace: list[StepRecord] = []
    change = change_map = previous = None
    large_done = False  # a hybrid step needs the K/V a full large step records
    if may_mask:
        models.masked_large.begin()
    try:
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoise", leave=False)):
            sigma = float(scheduler.sigmas[i])  # a fresh scheduler: step i uses sigmas[i]
            state = LoopState(step=i, num_steps=len(timesteps), timestep=float(t), sigma=sigma,
                              num_tokens=num_tokens, grid=grid, batch_size=batch, change=change,
                              change_map=change_map)
            decision: Decision = switch.decide(state)
            check_decision(decision, switch, i)
            if decision.hybrid and not large_done and not getattr(context, "computes_all_tokens", False):
                raise ConfigError("switch", f"{type(switch).__name__} asked for a hybrid step at step {i} before "
                                  "any large step", "the masked large model attends to K/V a full large step "
                                  "records: decide Decision(stage=0, large=True, small=False) first")
            model_input = torch.cat([latents] * 2) if guided else latents
            inputs = ModelInputs(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                                 encoder_hidden_states=prompt_embeds, pooled_projections=pooled_projections)
            large_timer, small_timer = _Timer(latents.device), _Timer(latents.device)
            large_tokens = small_tokens = 0
            small_prediction = None  # the small model's own prediction in a hybrid step
            if decision.hybrid:
                indices = mask.select(attrs.evolve(state, stage=decision.stage), decision.mask_ratio)
                check_indices(indices, mask, batch, num_tokens)
                indices = indices.to(latents.device)  # a policy without a change map builds them on the CPU
                model_indices = torch.cat([indices] * 2) if guided else indices  # both CFG halves share it
                with large_timer:
                    large_part = context.masked(models.masked_large, inputs, model_indices)
                with small_timer:
                    prediction = small_forward(inputs)
                _check_finite(large_part, i, "large")
                small_prediction = _check_finite(prediction, i, "small")  # unstitched, for the "small-x0" map
                prediction = stitch(small_prediction, large_part, model_indices, p)
                # FullLarge's large model computes every token even though only the masked ones are used.
                large_tokens = num_tokens if getattr(context, "computes_all_tokens", False) else indices.shape[1]
                small_tokens = num_tokens
            elif decision.large:
                with large_timer:
                    out = context.full(models.masked_large, inputs) if may_mask else plain_forward(models.large, inputs)
                prediction = _check_finite(out, i, "large")
                large_tokens = num_tokens
                large_done = True
            else:
                with small_timer:
                    out = small_forward(inputs)
                prediction = _check_finite(out, i, "small")
                small_tokens = num_tokens

            if guided:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
                if small_prediction is not None:
                    uncond, cond = small_prediction.chunk(2)
                    small_prediction = uncond + guidance_scale * (cond - uncond)
            next_latents = scheduler.step(prediction, t, latents, return_dict=False)[0]

            current = StepTensors.from_step(latents, next_latents, prediction, sigma,  # x0 of Eq. 10
                                            small_output=small_prediction)
            change, change_map = measure(previous, current, p)
            previous = current
            record = StepRecord(
                step=i, timestep=float(t), sigma=sigma, stage=decision.stage, large_tokens=large_tokens,
                small_tokens=small_tokens, num_tokens=num_tokens, mask_ratio=large_tokens / num_tokens,
                change=None if change is None else float(change.max()),
                large_ms=large_timer.ms, small_ms=small_timer.ms,
            )
            trace.append(record)
            if callback is not None:
                callback({"step": i, "timestep": t, "sigma": sigma, "latents": next_latents, "x0": current.x0,
                          "prediction": prediction, "tensors": current, "decision": decision, "record": record,
                          "change_map": change_map, "indices": indices if decision.hybrid else None})
            latents = next_latents
            if step_end is not None:  # issue 15: diffusers' callback_on_step_end may replace these three
                latents, prompt_embeds, pooled_projections = step_end(i, t, latents, prompt_embeds,
                                                                      pooled_projections)
    finally:
        context.release()
        if may_mask:
            models.masked_large.end()
    return latents, trace
