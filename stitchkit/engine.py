"""The denoising loop: the paper's Algorithm 1, with every decision delegated to policies.

Per step (Algorithm 1's line numbers in brackets):

1. the switch policy decides which models run, having seen the last step's change D_t        [lines 4-17, 20-22]
2. in a hybrid step the mask policy picks the tokens the large model recomputes                [line 23]
3. the large model runs (all tokens, or the masked ones with the context provider's K/V)       [lines 6, 10]
4. the small model runs on all tokens; the large model's tokens are stitched into its output    [lines 11-12]
5. classifier-free guidance, then ``scheduler.step`` exactly once                              [line 18]
6. the change D_t (Eq. 9-10) and its per-token map are measured for the next decision          [line 19]
7. a trace record, and the caller's callback.

Decisions are per sample: each sample of a batch has its own copy of the switch and mask policies and its
own ``D_t``, so it gets exactly the decisions it would get alone (a batch no longer runs at the pace of its
slowest prompt). Each step the batch is grouped by decision and every group runs batched: the large model
on all tokens for the large-only samples, one masked large forward per hybrid mask ratio, and the small
model once on every sample that needs it; both CFG halves of a sample stay together (model-batch rows ``b``
and ``B + b``) and share its mask. The K/V cache has one row per sample and half: a sample's rows are
recorded by its own full large steps and refreshed by its own masked ones.
There is no method-specific branch here: a new method is a new policy.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable, Mapping

import attrs
import torch

from stitchkit.change import MEASURES, StepTensors
from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.models.cuda_graphs import CudaGraphs, cuda_graphs_enabled
from stitchkit.models.stock import stock_forward
from stitchkit.models.tokens import stitch, token_grid
from stitchkit.per_sample import SampleMasks, SampleSwitch
from stitchkit.protocol_checks import check_decision
from stitchkit.protocols import ContextProvider, Decision, LoopState, MaskPolicy, ModelInputs, SwitchPolicy
from stitchkit.trace import BatchStep, ModelCall, StepRecord, batch_record

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
    """The large transformer (plain and wrapped for masked forwards) and the small one; ``patch_size`` per
    latent axis (an int: the same along all), ``forward`` the family's stock call (``Family.forward``)."""

    large: torch.nn.Module
    masked_large: Any  # the family's masked runner (Family.masked_runner)
    small: torch.nn.Module
    patch_size: int | tuple[int, ...]
    forward: Callable[[torch.nn.Module, ModelInputs], torch.Tensor] = stock_forward


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


def small_forward_fn(model: torch.nn.Module, device: torch.device, forward=stock_forward):
    """The small model's forward (``forward(model, inputs)``); on CUDA replayed from a graph: at the paper's
    sizes a small model's step is partly bound by kernel launches once the GPU has idled between calls."""
    if device.type != "cuda" or not cuda_graphs_enabled():
        return lambda inputs: forward(model, inputs)
    optional = ("pooled_projections", "guidance")  # the inputs a family may leave None
    present: list[str] = []  # which of them this call has (part of the graph's key)
    graphs = CudaGraphs(lambda x, t, e, *rest: forward(model, ModelInputs(
        hidden_states=x, timestep=t, encoder_hidden_states=e, **dict(zip(present, rest)))),
        key_extra=lambda: tuple(present))

    def run(inputs: ModelInputs) -> torch.Tensor:
        present[:] = [name for name in optional if getattr(inputs, name) is not None]
        return graphs(inputs.hidden_states, inputs.timestep, inputs.encoder_hidden_states,
                      *(getattr(inputs, name) for name in present))
    return run


def _check_finite(x: torch.Tensor, step: int, model: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(step, model)
    return x


@attrs.frozen(kw_only=True)
class Denoised:
    """What :func:`denoise` returns: the final latents, one trace per sample (``traces[b][i]`` is sample
    ``b``'s record of step ``i``), per step the batched model calls it made (:class:`BatchStep`), and the
    batch's own trace (:func:`stitchkit.trace.batch_record` per step; the sample's trace at batch 1)."""

    latents: torch.Tensor
    traces: tuple[tuple[StepRecord, ...], ...]
    steps: tuple[BatchStep, ...]
    trace: tuple[StepRecord, ...]


def _takes_rows(method: Callable) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return True
    return "rows" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _key(decision: Decision) -> tuple:
    """What groups samples: the models that run, the mask ratio of a masked step, and what is reused."""
    return (decision.large, decision.small, decision.mask_ratio if decision.masked else None, decision.reuse)


class _History:
    """Each sample's last two computed predictions (model outputs before guidance, both CFG halves) and
    their steps: what a ``reuse`` decision predicts from. "extrapolate" is TaylorSeer's first order
    (diffusers' ``taylorseer_cache``: the difference of the last two computed outputs over their step
    distance, times the steps since the last one); with one computed prediction it is reused as it is."""

    def __init__(self, batch: int, halves: int) -> None:
        self.batch, self.halves = batch, halves
        self.last: list[tuple[int, torch.Tensor] | None] = [None] * batch
        self.prev: list[tuple[int, torch.Tensor] | None] = [None] * batch

    def predict(self, samples: list[int], how: str, step: int) -> torch.Tensor:
        """``samples``' rows (halves-major, as the model batch orders them) predicted for ``step``."""
        rows = []
        for b in samples:
            if self.last[b] is None:
                raise ValueError(f"step {step}: sample {b} reuses a prediction before any was computed")
            k, last = self.last[b]
            if how == "extrapolate" and self.prev[b] is not None:
                k0, prev = self.prev[b]
                last = last + (last - prev) * ((step - k) / (k - k0))
            rows.append(last)
        return torch.stack([rows[j][h] for h in range(self.halves) for j in range(len(samples))])

    def record(self, prediction: torch.Tensor, samples: list[int], step: int) -> None:
        for b in samples:
            own = prediction[[h * self.batch + b for h in range(self.halves)]].clone()
            self.prev[b], self.last[b] = self.last[b], (step, own)


def _cached(cache, fn: Callable[[], torch.Tensor], masked: bool, samples: tuple[int, ...] | None,
            **where: Any) -> Callable[[], torch.Tensor]:
    """``fn`` in ``cache``'s context (one per model and set of samples), or, for a masked call, with the
    cache's hooks bypassed (:class:`stitchkit.caches.ModelCache`)."""
    if masked:
        def bypassed() -> torch.Tensor:
            with cache.bypass():
                return fn()
        return bypassed
    return lambda: cache.call(fn, samples, **where)


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
    caches: "Mapping[str, Any] | None" = None,
    guidance: torch.Tensor | None = None,
) -> Denoised:
    """Run the loop from ``latents`` over ``timesteps``; return the final latents and the traces.

    ``prompt_embeds``/``pooled_projections`` hold [uncond, cond] halves when ``guidance_scale > 1``.
    ``guidance``: a guidance-distilled model's guidance input, one value per row of those (FLUX.1-dev's;
    see :class:`stitchkit.families.Conditioning`), passed to every model call; ``None`` for other families.
    The scheduler must be freshly set to ``timesteps`` (its step index at the start); its step must act
    on each sample alone (every diffusers flow-matching scheduler does), as a batch's samples may be in
    different stages.

    ``caches``: ``{"large"|"small": ModelCache}`` (:mod:`stitchkit.caches`), diffusers' cache hooks attached
    for this generation only: every full call of a cached model runs in its ``cache_context``, masked calls
    bypass the hooks, and the hooks are removed when the loop ends, also on error.
    """
    from tqdm.auto import tqdm

    switch, mask, context = policies.switch, policies.mask, policies.context
    guided = guidance_scale > 1.0
    batch = latents.shape[0]
    halves = 2 if guided else 1
    cache_rows = batch * halves
    device = latents.device
    p = models.patch_size
    grid = token_grid(latents.shape[2:], p)  # (rows, columns), or (frames, rows, columns) for a video
    num_tokens = math.prod(grid)
    num_steps = len(timesteps)
    plain_forward = models.forward
    measure = MEASURES[switch.change_measure]
    # The mask's change map may come from another measure than D_t (a policy's ``mask_measure``).
    map_measure = MEASURES[getattr(switch, "mask_measure", None) or switch.change_measure]
    # A policy that never masks needs no K/V recording: its large steps are the stock forward.
    may_mask = getattr(switch, "may_mask", True)
    all_tokens = getattr(context, "computes_all_tokens", False)
    caches = dict(caches or {})
    large_cache, small_cache = caches.get("large"), caches.get("small")
    # A hooked model's Python control flow cannot be replayed from a CUDA graph.
    small_forward = small_forward_fn(models.small, device if small_cache is None else torch.device("cpu"),
                                     models.forward)
    now = {"t": float(timesteps[0]) if num_steps else 0.0}  # the timestep PAB and FasterCache ask for

    switches = SampleSwitch(switch, batch, num_steps)  # resets the policy, then one copy per sample
    masks = SampleMasks(mask, batch)
    context.reset()
    traces: list[list[StepRecord]] = [[] for _ in range(batch)]
    batch_steps: list[BatchStep] = []
    change = change_map = previous = None
    everyone = list(range(batch))
    large_done = [False] * batch  # a sample's hybrid step needs the K/V its full large step records
    history = _History(batch, halves)

    def rows_of(samples: list[int]) -> list[int]:
        return [h * batch + b for h in range(halves) for b in samples]

    def subset(inputs: ModelInputs, samples: list[int]) -> tuple[ModelInputs, torch.Tensor | None]:
        """The inputs of ``samples`` (both CFG halves), and their cache rows (``None``: the whole batch)."""
        if samples == everyone:
            return inputs, None
        rows = torch.tensor(rows_of(samples), dtype=torch.int64, device=device)
        return ModelInputs(hidden_states=inputs.hidden_states.index_select(0, rows),
                           timestep=inputs.timestep.index_select(0, rows),
                           encoder_hidden_states=inputs.encoder_hidden_states.index_select(0, rows),
                           pooled_projections=None if inputs.pooled_projections is None
                           else inputs.pooled_projections.index_select(0, rows),
                           guidance=None if inputs.guidance is None else inputs.guidance.index_select(0, rows)), rows

    def check_rows_supported() -> None:
        lacking = [f"{type(context).__name__}.{name}()" for name in ("full", "masked")
                   if not _takes_rows(getattr(context, name))]
        if lacking:
            raise ConfigError("context", f"{' and '.join(lacking)} take no rows= argument, which a batch whose "
                              "samples are in different stages needs",
                              "add rows=None (and cache_rows=None to full) and pass them to large.forward / "
                              "large.forward_masked, or generate one prompt at a time")

    attached: list[Any] = []
    if may_mask:
        models.masked_large.begin()
    try:
        for cache in caches.values():
            attached.append(cache)
            cache.attach(num_steps=num_steps, guided=guided, current_timestep=lambda: now["t"])
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoise", leave=False)):
            sigma = float(scheduler.sigmas[i])  # a fresh scheduler: step i uses sigmas[i]
            now["t"] = float(t)
            state = LoopState(step=i, num_steps=num_steps, timestep=float(t), sigma=sigma, num_tokens=num_tokens,
                              grid=grid, batch_size=batch, change=change, change_map=change_map)
            # Every sample alone: its own policy copy, its own D_t and change map.
            decisions, states = switches.decide(state)
            for b, decision in enumerate(decisions):
                check_decision(decision, switch, i)
                if decision.masked and not large_done[b] and not all_tokens:
                    raise ConfigError(
                        "switch", f"{type(switch).__name__} asked for a hybrid step at step {i} before any large "
                        "step" + (f" (sample {b})" if batch > 1 else ""), "the masked large model attends to K/V a "
                        "full large step records: decide Decision(stage=0, large=True, small=False) first")
            model_input = torch.cat([latents] * 2) if guided else latents
            inputs = ModelInputs(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                                 encoder_hidden_states=prompt_embeds, pooled_projections=pooled_projections,
                                 guidance=guidance)

            groups: dict[tuple, list[int]] = {}
            for b, decision in enumerate(decisions):
                groups.setdefault(_key(decision), []).append(b)
            calls: list[ModelCall] = []
            large_ms, small_ms = [0.0] * batch, [0.0] * batch
            large_tokens, small_tokens, reused_tokens = [0] * batch, [0] * batch, [0] * batch
            sample_indices: list[torch.Tensor | None] = [None] * batch
            hybrid_small: list[list[int]] = []  # hybrid groups, whose unstitched small rows "small-x0" reads
            prediction = None  # (2B, C, H, W) once every group has written its rows

            def put(samples: list[int], out: torch.Tensor) -> None:
                nonlocal prediction
                if samples == everyone:
                    prediction = out
                    return
                if prediction is None:
                    prediction = model_input.new_empty(model_input.shape)
                prediction.index_copy_(0, torch.tensor(rows_of(samples), device=device), out)

            def timed(model: str, samples: list[int], tokens: int, fn: Callable[[], torch.Tensor],
                      masked: bool = False) -> torch.Tensor:
                cache = large_cache if model == "large" else small_cache
                if cache is not None:  # in the model's cache context; a masked call kept away from the hooks
                    fn = _cached(cache, fn, masked, None if samples == everyone else tuple(samples),
                                 step_index=i, num_inference_steps=num_steps, timestep=float(t), sigma=sigma)
                timer = _Timer(device)
                with timer:
                    out = fn()
                calls.append(ModelCall(model=model, samples=tuple(samples), tokens=tokens, num_tokens=num_tokens,
                                       ms=timer.ms))
                share = large_ms if model == "large" else small_ms
                for b in samples:
                    share[b] += timer.ms / len(samples)
                return _check_finite(out, i, model)

            # The small model once, on every sample that runs it (small-only and hybrid alike).
            small_samples = [b for b, d in enumerate(decisions) if d.small]
            small_out = None
            if small_samples:
                small_inputs, _ = subset(inputs, small_samples)
                small_out = timed("small", small_samples, num_tokens, lambda: small_forward(small_inputs))
                for b in small_samples:
                    small_tokens[b] = num_tokens
            small_place = {b: j for j, b in enumerate(small_samples)}

            def small_rows(samples: list[int]) -> torch.Tensor:
                """``samples``' rows (both halves) of the small model's output."""
                if samples == small_samples:
                    return small_out
                n = len(small_samples)
                return small_out.index_select(0, torch.tensor(
                    [h * n + small_place[b] for h in range(halves) for b in samples], device=device))

            for (large, small, ratio, reuse), samples in groups.items():
                if not large and not small:  # no model: the previous prediction, reused
                    put(samples, history.predict(samples, reuse, i))
                    for b in samples:
                        reused_tokens[b] = num_tokens
                    continue
                if not large:  # small alone: its rows of the small model's output
                    put(samples, small_rows(samples))
                    continue
                sub_inputs, rows = subset(inputs, samples)
                if not small and reuse is None:  # large alone, every token (and, when masks may follow, these rows' K/V recorded)
                    if not may_mask:
                        fn = lambda: plain_forward(models.large, sub_inputs)  # noqa: E731
                    elif rows is None:
                        fn = lambda: context.full(models.masked_large, sub_inputs)  # noqa: E731
                    else:
                        check_rows_supported()
                        fn = lambda: context.full(models.masked_large, sub_inputs,  # noqa: E731
                                                  rows=rows, cache_rows=cache_rows)
                    put(samples, timed("large", samples, num_tokens, fn))
                    for b in samples:
                        large_tokens[b] = num_tokens
                        large_done[b] = True
                    continue
                # Masked at this ratio (hybrid, or large-with-reuse): each sample's own mask, one size m.
                indices = masks.select(state, states, decisions, samples, ratio, device)
                model_indices = torch.cat([indices] * 2) if guided else indices  # both CFG halves share it
                m = indices.shape[1]
                if rows is None:
                    fn = lambda: context.masked(models.masked_large, sub_inputs, model_indices)  # noqa: E731
                else:
                    check_rows_supported()
                    fn = lambda: context.masked(models.masked_large, sub_inputs, model_indices,  # noqa: E731
                                                rows=rows)
                large_part = timed("large", samples, num_tokens if all_tokens else m, fn, masked=True)
                rest = small_rows(samples) if small else history.predict(samples, reuse, i)
                put(samples, stitch(rest, large_part, model_indices, p))
                if small:
                    hybrid_small.append(samples)
                for j, b in enumerate(samples):
                    # FullLarge's large model computes every token even though only the masked ones are used.
                    large_tokens[b] = num_tokens if all_tokens else m
                    reused_tokens[b] = 0 if small else num_tokens - m
                    sample_indices[b] = indices[j:j + 1]

            # The small model's own prediction where it ran under a mask (the rest: the step's prediction).
            small_prediction = None
            if hybrid_small:
                small_prediction = prediction.clone()
                for samples in hybrid_small:
                    small_prediction.index_copy_(0, torch.tensor(rows_of(samples), device=device),
                                                 small_rows(samples))
            # What reuse predicts from: every sample a model computed (a RAS step's tokens are part fresh).
            history.record(prediction, [b for b in everyone if decisions[b].large or decisions[b].small], i)

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
            if map_measure is not measure:
                change_map = map_measure(previous, current, p)[1]
            previous = current
            changes = [None] * batch if change is None else [float(c) for c in change.tolist()]
            records = tuple(StepRecord(
                step=i, timestep=float(t), sigma=sigma, stage=decisions[b].stage, large_tokens=large_tokens[b],
                small_tokens=small_tokens[b], num_tokens=num_tokens, mask_ratio=large_tokens[b] / num_tokens,
                change=changes[b], large_ms=large_ms[b], small_ms=small_ms[b], sample=b,
                reused_tokens=reused_tokens[b],
            ) for b in everyone)
            for trace, record in zip(traces, records):
                trace.append(record)
            batch_steps.append(BatchStep(step=i, calls=tuple(calls), mixed=len(groups) > 1))
            if callback is not None:
                uniform = len(groups) == 1
                hybrid = uniform and decisions[0].masked
                callback({"step": i, "timestep": t, "sigma": sigma, "latents": next_latents, "x0": current.x0,
                          "prediction": prediction, "tensors": current, "change_map": change_map,
                          "decisions": tuple(decisions), "records": records,
                          "sample_indices": tuple(sample_indices), "calls": tuple(calls),
                          # The batch's one decision, record and (B, m) mask, where it has one.
                          "decision": decisions[0] if uniform else None,
                          "record": records[0] if batch == 1 else None,
                          "indices": torch.cat(sample_indices) if hybrid else None})
            latents = next_latents
            if step_end is not None:  # issue 15: diffusers' callback_on_step_end may replace these three
                latents, prompt_embeds, pooled_projections = step_end(i, t, latents, prompt_embeds,
                                                                      pooled_projections)
    finally:
        try:
            for cache in reversed(attached):
                cache.remove()
        finally:
            context.release()
            if may_mask:
                models.masked_large.end()
    return Denoised(latents=latents, traces=tuple(tuple(t) for t in traces), steps=tuple(batch_steps),
                    trace=tuple(batch_record(records, step) for records, step in zip(zip(*traces), batch_steps)))
