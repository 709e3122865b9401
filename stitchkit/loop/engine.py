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
There is no method-specific branch here: a new method is a new policy. ``denoise``'s body numbers its
phases (1-11) as diffusers numbers ``__call__``'s; a step's calls and the prediction they assemble are a
:class:`_Step`, the batch's row layout a :class:`_Rows`.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable, Mapping

import attrs
import torch

from stitchkit.loop.change import MEASURES, StepTensors
from stitchkit.errors import ConfigError, NonFiniteError
from stitchkit.models.stock import small_forward_fn, stock_forward
from stitchkit.tokens import stitch, token_grid
from stitchkit.loop.per_sample import SampleMasks, SampleSwitch
from stitchkit.loop.protocol_checks import check_decision
from stitchkit.protocols import ContextProvider, Decision, LoopState, MaskPolicy, ModelInputs, SwitchPolicy
from stitchkit.loop.trace import BatchStep, ModelCall, StepRecord, batch_record

StepCallback = Callable[[dict[str, Any]], None]
#: ``(step, timestep, latents, prompt_embeds, pooled_projections) -> the same three``, after the scheduler
#: step: diffusers' ``callback_on_step_end``, which may replace them (see stitchkit.pipeline.conventions).
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


def _check_finite(x: torch.Tensor, step: int, model: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(step, model)
    return x


@attrs.frozen(kw_only=True)
class Denoised:
    """What :func:`denoise` returns: the final latents, one trace per sample (``traces[b][i]`` is sample
    ``b``'s record of step ``i``), per step the batched model calls it made (:class:`BatchStep`), and the
    batch's own trace (:func:`stitchkit.loop.trace.batch_record` per step; the sample's trace at batch 1)."""

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


class _Anchors:
    """Each sample's anchor for the small model as the cache's corrector (``Decision(reuse="corrected")``):
    both models' outputs (before guidance, both CFG halves) at the sample's last anchor step. A corrected
    step predicts ``L_k + g · (S_t - S_k)``: the large model's last output moved by (a share ``g`` of) what the
    small model says changed since, so a skipped large step follows the trajectory instead of standing
    still (issue 21). ``g`` is the switch policy's ``correction_gain`` (1 where it declares none)."""

    def __init__(self, batch: int, halves: int) -> None:
        self.batch, self.halves = batch, halves
        self.large: list[torch.Tensor | None] = [None] * batch
        self.small: list[torch.Tensor | None] = [None] * batch

    def _own(self, rows: torch.Tensor, j: int, n: int) -> torch.Tensor:
        return rows[[h * n + j for h in range(self.halves)]].clone()

    def record(self, samples: list[int], large: torch.Tensor, small: torch.Tensor) -> None:
        """``large``/``small``: ``samples``' rows (halves-major) of each model's output at an anchor step."""
        for j, b in enumerate(samples):
            self.large[b], self.small[b] = self._own(large, j, len(samples)), self._own(small, j, len(samples))

    def correct(self, samples: list[int], small: torch.Tensor, step: int, gain: float = 1.0) -> torch.Tensor:
        """``samples``' rows of ``L_k + gain · (S_t - S_k)``, ``small`` their rows of this step's small output."""
        n = len(samples)
        rows = []
        for j, b in enumerate(samples):
            if self.large[b] is None:
                raise ConfigError("switch", f"step {step}: sample {b} took a corrected step before any anchor step",
                                  "decide Decision(large=True, small=True, reuse='corrected') first")
            rows.append(self.large[b] + gain * (self._own(small, j, n) - self.small[b]))
        return torch.stack([rows[j][h] for h in range(self.halves) for j in range(n)])


def _cached(cache, fn: Callable[[], torch.Tensor], masked: bool, samples: tuple[int, ...] | None,
            **where: Any) -> Callable[[], torch.Tensor]:
    """``fn`` in ``cache``'s context (one per model and set of samples), or, for a masked call, with the
    cache's hooks bypassed (:class:`stitchkit.loop.caches.ModelCache`)."""
    if masked:
        def bypassed() -> torch.Tensor:
            with cache.bypass():
                return fn()
        return bypassed
    return lambda: cache.call(fn, samples, **where)


class _Rows:
    """Where each sample lives in the model batch: sample ``b`` of ``B`` owns rows ``b`` (and ``B + b``, its
    conditional CFG half). A group of samples runs on its rows only."""

    def __init__(self, batch: int, halves: int, device: torch.device) -> None:
        self.batch, self.halves, self.device = batch, halves, device
        self.everyone = list(range(batch))

    def of(self, samples: list[int], half: int | None = None) -> list[int]:
        return [h * self.batch + b for h in (range(self.halves) if half is None else [half]) for b in samples]

    def index(self, samples: list[int], half: int | None = None) -> torch.Tensor:
        return torch.tensor(self.of(samples, half), dtype=torch.int64, device=self.device)

    def subset(self, inputs: ModelInputs, samples: list[int],
               half: int | None = None) -> tuple[ModelInputs, torch.Tensor | None]:
        """The inputs of ``samples`` (both CFG halves, or only ``half``'s rows), and their cache rows
        (``None``: the whole batch)."""
        if samples == self.everyone and half is None:
            return inputs, None
        rows = self.index(samples, half)
        return ModelInputs(hidden_states=inputs.hidden_states.index_select(0, rows),
                           timestep=inputs.timestep.index_select(0, rows),
                           encoder_hidden_states=inputs.encoder_hidden_states.index_select(0, rows),
                           pooled_projections=None if inputs.pooled_projections is None
                           else inputs.pooled_projections.index_select(0, rows),
                           guidance=None if inputs.guidance is None else inputs.guidance.index_select(0, rows)), rows


class _Step:
    """One step's model calls and the prediction they assemble: each call timed (and run in its model's
    cache context), each group's rows put into the step's prediction, and per sample the tokens each
    model computed and its share of the calls' time (the trace record)."""

    def __init__(self, rows: _Rows, *, step: int, timestep: torch.Tensor, sigma: float, num_steps: int,
                 num_tokens: int, model_input: torch.Tensor, caches: Mapping[str, Any]) -> None:
        self.rows, self.step, self.timestep, self.sigma = rows, step, timestep, sigma
        self.num_steps, self.num_tokens, self.model_input, self.caches = num_steps, num_tokens, model_input, caches
        batch = rows.batch
        self.calls: list[ModelCall] = []
        self.ms = {"large": [0.0] * batch, "small": [0.0] * batch}
        self.large_tokens, self.small_tokens, self.reused_tokens = [0] * batch, [0] * batch, [0] * batch
        self.sample_indices: list[torch.Tensor | None] = [None] * batch
        # Hybrid and corrector groups: the small model's own rows, which "small-x0" and "small-output" read.
        self.hybrid_small: list[list[int]] = []
        self.prediction: torch.Tensor | None = None  # (2B, C, H, W) once every group has written its rows
        self.small_samples: list[int] = []
        self.small_out: torch.Tensor | None = None

    def put(self, samples: list[int], out: torch.Tensor) -> None:
        """``samples``' rows of the prediction."""
        if samples == self.rows.everyone:
            self.prediction = out
            return
        if self.prediction is None:
            self.prediction = self.model_input.new_empty(self.model_input.shape)
        self.prediction.index_copy_(0, self.rows.index(samples), out)

    def timed(self, model: str, samples: list[int], tokens: int, fn: Callable[[], torch.Tensor],
              masked: bool = False, fn_for: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """``fn()`` (a call of ``model`` on ``samples``), timed and checked finite; in the model's cache
        context at the loop's step, a masked call kept away from the cache's hooks. Once a cached model ran
        on part of the batch, its state is per sample and it runs once per sample (``fn_for([b])``); a cache
        that keeps the CFG halves apart runs once per half (``fn_for(samples, half)``)."""
        cache = self.caches.get(model)
        if cache is not None:
            where = {"step_index": self.step, "num_inference_steps": self.num_steps,
                     "timestep": float(self.timestep), "sigma": self.sigma}
            if not masked and (cache.split or samples != self.rows.everyone):
                cache.per_sample(self.rows.batch, self.rows.halves)
                fn = self._per_sample(cache, samples, fn, fn_for, where)
            elif not masked and cache.halves_apart:
                fn = self._per_half(cache, [None], samples, fn_for, where)
            else:
                fn = _cached(cache, fn, masked, None, **where)
        timer = _Timer(self.rows.device)
        with timer:
            out = fn()
        self.calls.append(ModelCall(model=model, samples=tuple(samples), tokens=tokens, num_tokens=self.num_tokens,
                                    ms=timer.ms))
        for b in samples:
            self.ms[model][b] += timer.ms / len(samples)
        return _check_finite(out, self.step, model)

    def _per_sample(self, cache, samples: list[int], fn: Callable[[], torch.Tensor],
                    fn_for: Callable[..., torch.Tensor] | None, where: dict) -> Callable[[], torch.Tensor]:
        """The call as one call per sample, each in its own cache context, rows put back halves-major."""
        if cache.halves_apart:
            return self._per_half(cache, [(b,) for b in samples], samples, fn_for, where)
        if len(samples) == 1:
            return lambda: cache.call(fn, (samples[0],), **where)

        def each() -> torch.Tensor:
            outs = [cache.call(lambda b=b: fn_for([b]), (b,), **where) for b in samples]
            return torch.cat([out[h:h + 1] for h in range(self.rows.halves) for out in outs])
        return each

    def _per_half(self, cache, keys: list[tuple[int, ...] | None], samples: list[int],
                  fn_for: Callable[..., torch.Tensor], where: dict) -> Callable[[], torch.Tensor]:
        """The call as one call per CFG half (unconditional rows, then conditional) of each key (``None``:
        ``samples`` together; ``(b,)``: sample ``b``), each in its own cache context, rows put back in order."""
        def each() -> torch.Tensor:
            outs = {(key, h): cache.call(lambda some=(samples if key is None else list(key)), h=h: fn_for(some, h),
                                         key, half=h, **where)
                    for key in keys for h in range(self.rows.halves)}
            return torch.cat([outs[key, h] for h in range(self.rows.halves) for key in keys])
        return each

    def run_small(self, samples: list[int], small_forward: Callable[[ModelInputs], torch.Tensor],
                  inputs: ModelInputs) -> None:
        """The small model once, on every sample that runs it (small-only and hybrid alike)."""
        self.small_samples = samples
        if samples:
            small_inputs, _ = self.rows.subset(inputs, samples)
            self.small_out = self.timed("small", samples, self.num_tokens, lambda: small_forward(small_inputs),
                                        fn_for=lambda some, half=None: small_forward(self.rows.subset(inputs, some, half)[0]))
            for b in samples:
                self.small_tokens[b] = self.num_tokens

    def small_rows(self, samples: list[int]) -> torch.Tensor:
        """``samples``' rows (both halves) of the small model's output."""
        if samples == self.small_samples:
            return self.small_out
        place = {b: j for j, b in enumerate(self.small_samples)}
        n = len(self.small_samples)
        return self.small_out.index_select(0, torch.tensor(
            [h * n + place[b] for h in range(self.rows.halves) for b in samples], device=self.rows.device))

    def small_prediction(self) -> torch.Tensor | None:
        """The small model's own prediction where it ran under a mask (the rest: the step's prediction),
        what the ``small-x0`` change measure reads; ``None`` when no hybrid group ran."""
        if not self.hybrid_small:
            return None
        out = self.prediction.clone()
        for samples in self.hybrid_small:
            out.index_copy_(0, self.rows.index(samples), self.small_rows(samples))
        return out


def _sigma_step(scheduler, i: int) -> torch.Tensor | None:
    """The scheduler's own ``sigmas[i + 1] - sigmas[i]`` (what its Euler step multiplies the output by),
    ``None`` for a scheduler without a terminal sigma."""
    sigmas = getattr(scheduler, "sigmas", None)
    return None if sigmas is None or len(sigmas) <= i + 1 else sigmas[i + 1] - sigmas[i]


def _guide(prediction: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    """Classifier-free guidance over the [uncond, cond] halves."""
    if prediction is None:
        return None
    uncond, cond = prediction.chunk(2)
    return uncond + scale * (cond - uncond)


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
    after_guidance: Callable[..., torch.Tensor] | None = None,
) -> Denoised:
    """Run the loop from ``latents`` over ``timesteps``; return the final latents and the traces.

    ``prompt_embeds``/``pooled_projections`` hold [uncond, cond] halves when ``guidance_scale > 1``.
    ``guidance``: a guidance-distilled model's guidance input, one value per row of those (FLUX.1-dev's;
    see :class:`stitchkit.families.Conditioning`), passed to every model call; ``None`` for other families.
    The scheduler must be freshly set to ``timesteps`` (its step index at the start); its step must act
    on each sample alone (every diffusers flow-matching scheduler does), as a batch's samples may be in
    different stages.

    ``caches``: ``{"large"|"small": ModelCache}`` (:mod:`stitchkit.loop.caches`), diffusers' cache hooks attached
    for this generation only: every full call of a cached model runs in its ``cache_context``, masked calls
    bypass the hooks, and the hooks are removed when the loop ends, also on error.

    ``after_guidance(i, t, latents, raw, guided, decisions)``: under classifier-free guidance, a term added to
    the guided prediction before the scheduler's step (skip-layer guidance), ``raw`` holding both halves.
    """
    from tqdm.auto import tqdm  # deferred: tqdm.auto probes for a notebook on import

    # 1. The generation's constants: batch layout, token grid, the measures the switch policy reads.
    switch, mask, context = policies.switch, policies.mask, policies.context
    guided = guidance_scale > 1.0
    batch = latents.shape[0]
    rows = _Rows(batch, 2 if guided else 1, latents.device)
    cache_rows = batch * rows.halves
    p = models.patch_size
    grid = token_grid(latents.shape[2:], p)  # (rows, columns), or (frames, rows, columns) for a video
    num_tokens = math.prod(grid)
    num_steps = len(timesteps)
    measure = MEASURES[switch.change_measure]
    # The mask's change map may come from another measure than D_t (a policy's ``mask_measure``).
    map_measure = MEASURES[getattr(switch, "mask_measure", None) or switch.change_measure]
    # A policy that never masks needs no K/V recording: its large steps are the stock forward.
    may_mask = getattr(switch, "may_mask", True)
    all_tokens = getattr(context, "computes_all_tokens", False)
    # reuse="corrected": the share of the small model's change since the anchor that is added.
    correction_gain = float(getattr(switch, "correction_gain", 1.0))
    caches = dict(caches or {})
    # A hooked model's Python control flow cannot be replayed from a CUDA graph.
    small_forward = small_forward_fn(models.small, rows.device if "small" not in caches else torch.device("cpu"),
                                     models.forward)
    now = {"t": float(timesteps[0]) if num_steps else 0.0}  # the timestep PAB and FasterCache ask for

    # 2. Per-generation state: policies reset (one switch and mask copy per sample), traces, history.
    switches = SampleSwitch(switch, batch, num_steps)
    masks = SampleMasks(mask, batch)
    context.reset()
    traces: list[list[StepRecord]] = [[] for _ in range(batch)]
    batch_steps: list[BatchStep] = []
    change = change_map = previous = None
    large_done = [False] * batch  # a sample's hybrid step needs the K/V its full large step records
    history = _History(batch, rows.halves)
    anchors = _Anchors(batch, rows.halves)
    def check_rows_supported() -> None:
        lacking = [f"{type(context).__name__}.{name}()" for name in ("full", "masked")
                   if not _takes_rows(getattr(context, name))]
        if lacking:
            raise ConfigError("context", f"{' and '.join(lacking)} take no rows= argument, which a batch whose "
                              "samples are in different stages needs",
                              "add rows=None (and cache_rows=None to full) and pass them to large.forward / "
                              "large.forward_masked, or generate one prompt at a time")

    # 3. Attach: the masked runner's K/V cache, diffusers' cache hooks (removed in 11., also on error).
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

            # 4. Decide, every sample alone with its own D_t and change map [Algorithm 1, lines 4-17, 20-22].
            state = LoopState(step=i, num_steps=num_steps, timestep=float(t), sigma=sigma, num_tokens=num_tokens,
                              grid=grid, batch_size=batch, change=change, change_map=change_map)
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
            step = _Step(rows, step=i, timestep=t, sigma=sigma, num_steps=num_steps, num_tokens=num_tokens,
                         model_input=model_input, caches=caches)

            # 5. The small model once, on every sample that runs it [line 11].
            step.run_small([b for b, d in enumerate(decisions) if d.small], small_forward, inputs)

            # 6. Each group of samples with one decision: reused, small alone, large on every token, or the
            #    large model on the masked tokens with its K/V context, stitched into the rest [lines 6, 10, 12, 23].
            for (large, small, ratio, reuse), samples in groups.items():
                if not large and not small:  # no model: the previous prediction, reused
                    step.put(samples, history.predict(samples, reuse, i))
                    for b in samples:
                        step.reused_tokens[b] = num_tokens
                    continue
                if not large and reuse == "corrected":  # the anchor's large output, corrected by the small model
                    step.put(samples, anchors.correct(samples, step.small_rows(samples), i, correction_gain))
                    step.hybrid_small.append(samples)
                    for b in samples:
                        step.reused_tokens[b] = num_tokens
                    continue
                if not large:  # small alone: its rows of the small model's output
                    step.put(samples, step.small_rows(samples))
                    continue
                sub_inputs, sub_rows = rows.subset(inputs, samples)

                def full_large(some: list[int], half: int | None = None) -> torch.Tensor:
                    """The large model on every token of ``some`` (K/V recorded when masks may follow)."""
                    some_inputs, some_rows = rows.subset(inputs, some, half)
                    if not may_mask:
                        return models.forward(models.large, some_inputs)
                    if some_rows is None:
                        return context.full(models.masked_large, some_inputs)
                    check_rows_supported()
                    return context.full(models.masked_large, some_inputs, rows=some_rows, cache_rows=cache_rows)
                if (not small and reuse is None) or reuse == "corrected":  # large alone, or a corrector's anchor
                    out = step.timed("large", samples, num_tokens, lambda s=samples: full_large(s), fn_for=full_large)
                    step.put(samples, out)
                    for b in samples:
                        step.large_tokens[b] = num_tokens
                        large_done[b] = True
                    if reuse == "corrected":
                        anchors.record(samples, out, step.small_rows(samples))
                        step.hybrid_small.append(samples)
                    continue
                # Masked at this ratio (hybrid, or large-with-reuse): each sample's own mask, one size m.
                indices = masks.select(state, states, decisions, samples, ratio, rows.device)
                model_indices = torch.cat([indices] * 2) if guided else indices  # both CFG halves share it
                m = indices.shape[1]
                if sub_rows is None:
                    fn = lambda: context.masked(models.masked_large, sub_inputs, model_indices)  # noqa: E731
                else:
                    check_rows_supported()
                    fn = lambda: context.masked(models.masked_large, sub_inputs, model_indices,  # noqa: E731
                                                rows=sub_rows)
                large_part = step.timed("large", samples, num_tokens if all_tokens else m, fn, masked=True)
                rest = step.small_rows(samples) if small else history.predict(samples, reuse, i)
                step.put(samples, stitch(rest, large_part, model_indices, p))
                if small:
                    step.hybrid_small.append(samples)
                for j, b in enumerate(samples):
                    # FullLarge's large model computes every token even though only the masked ones are used.
                    step.large_tokens[b] = num_tokens if all_tokens else m
                    step.reused_tokens[b] = 0 if small else num_tokens - m
                    step.sample_indices[b] = indices[j:j + 1]
            # What reuse predicts from: every sample a model computed (a RAS step's tokens are part fresh).
            history.record(step.prediction, [b for b in rows.everyone if decisions[b].large or decisions[b].small], i)

            # 7. Classifier-free guidance, then the scheduler's step exactly once [line 18].
            small_prediction = step.small_prediction()
            prediction = step.prediction
            if guided:
                raw_prediction, prediction = prediction, _guide(prediction, guidance_scale)
                small_prediction = _guide(small_prediction, guidance_scale)
                if after_guidance is not None:  # e.g. skip-layer guidance (stitchkit.pipeline.skip_layer_guidance)
                    prediction = after_guidance(i, t, latents, raw_prediction, prediction, decisions)
            next_latents = scheduler.step(prediction, t, latents, return_dict=False)[0]

            # 8. The change D_t (Eq. 9-10) and its per-token map, for the next decision [line 19].
            current = StepTensors.from_step(latents, next_latents, prediction, sigma,  # x0 of Eq. 10
                                            small_output=small_prediction, sigma_step=_sigma_step(scheduler, i))
            change, change_map = measure(previous, current, p)
            if map_measure is not measure:
                change_map = map_measure(previous, current, p)[1]
            previous = current

            # 9. The trace: one record per sample, the step's batched calls.
            changes = [None] * batch if change is None else [float(c) for c in change.tolist()]
            records = tuple(StepRecord(
                step=i, timestep=float(t), sigma=sigma, stage=decisions[b].stage,
                large_tokens=step.large_tokens[b], small_tokens=step.small_tokens[b], num_tokens=num_tokens,
                mask_ratio=step.large_tokens[b] / num_tokens, change=changes[b], large_ms=step.ms["large"][b],
                small_ms=step.ms["small"][b], sample=b, reused_tokens=step.reused_tokens[b],
            ) for b in rows.everyone)
            for trace, record in zip(traces, records):
                trace.append(record)
            batch_steps.append(BatchStep(step=i, calls=tuple(step.calls), mixed=len(groups) > 1))

            # 10. The callbacks: stitchkit's per-step record, then diffusers' callback_on_step_end.
            if callback is not None:
                uniform = len(groups) == 1
                hybrid = uniform and decisions[0].masked
                callback({"step": i, "timestep": t, "sigma": sigma, "latents": next_latents, "x0": current.x0,
                          "prediction": prediction, "tensors": current, "change_map": change_map,
                          "decisions": tuple(decisions), "records": records,
                          "sample_indices": tuple(step.sample_indices), "calls": tuple(step.calls),
                          # The batch's one decision, record and (B, m) mask, where it has one.
                          "decision": decisions[0] if uniform else None,
                          "record": records[0] if batch == 1 else None,
                          "indices": torch.cat(step.sample_indices) if hybrid else None})
            latents = next_latents
            if step_end is not None:  # diffusers' callback_on_step_end may replace these three
                latents, prompt_embeds, pooled_projections = step_end(i, t, latents, prompt_embeds,
                                                                      pooled_projections)
    finally:
        # 11. Detach: cache hooks removed, the context's K/V released, the masked runner ended.
        try:
            for cache in reversed(attached):
                cache.remove()
        finally:
            context.release()
            if may_mask:
                models.masked_large.end()
    return Denoised(latents=latents, traces=tuple(tuple(t) for t in traces), steps=tuple(batch_steps),
                    trace=tuple(batch_record(records, step) for records, step in zip(zip(*traces), batch_steps)))
