"""diffusers' cache hooks inside stitchkit's loop: attached for one generation, given the ``cache_context``
they need, kept away from masked calls, removed after (also on error).

The hooks themselves are diffusers' (``diffusers.hooks.apply_*``, registered as cache plugins in
``stitchkit.policies.caches``). diffusers 0.42.1's ``StableDiffusion3Pipeline`` never opens a cache context,
so the stateful hooks raise there; stitchkit's engine wraps every call of a cached model in
``model.cache_context(name)``. The context's name keys the hooks' state, and a cached model may run on
different subsets of a batch from step to step (decisions are per sample), while a hook's state is shaped
like the batch it saw: so the name is the model's role and the samples of the call (``"large"`` for the
whole batch, ``"large:0,2"`` for samples 0 and 2). A batch of one has one context per model per generation.

A masked forward (a hybrid step's large call) runs the blocks on a subset of the tokens with K/V-cache
attention processors: a cache's residuals of full-token calls do not fit it. :meth:`ModelCache.bypass`
sets every hooked module's ``forward`` back to the one beneath the hooks for such a call, so the hooks never
see it and their state is untouched. The large model's full steps of a hybrid method (those that record
K/V) do go through the hooks: a block a cache skips keeps the K/V it recorded last.

**The loop's clock.** diffusers' hooks count their own calls; inside a schedule a model does not run every
step, so :meth:`ModelCache.call` hands the cache the loop's step just before each call (the plugin's
``at_step(model, step, resumed)``), with ``resumed`` true when that model (for those samples) did not run
through the hooks at the previous step: it then starts without a previous residual. A cache without
``at_step`` is refused as soon as its model skips a step of the loop, naming it.

**State follows the sample.** While a cached model runs on the whole batch its hooks keep one state, as in
diffusers' pipeline (``context "large"``). The first call on a subset of the batch (samples in different
stages) splits every context-keyed state into one per sample (``"large:0"``, ``"large:1"``: each tensor's
rows of that sample, both CFG halves, the scalars copied), and from then on each sample runs in its own
context (:meth:`ModelCache.per_sample`), whichever group it is in. Caches whose hooks keep one state per
hook instead of per context (PAB, FasterCache: ``per_sample_state = False``) are refused there.

**CFG halves apart.** A cache with ``separate_cfg`` (MagCache's option) in a guided generation keeps one
state per CFG half, as two separate CFG calls would (Zehong-Ma/MagCache's Wan 2.1 original): the engine runs
each cached call as two, the unconditional rows then the conditional ones, in contexts ``"large:uncond"`` and
``"large:cond"`` (``"large:0:uncond"``, ... once per sample). Unguided, there is one half and nothing changes.

MagCache needs magnitude ratios per model: without them, the pipeline runs one calibration generation in
diffusers' calibrate mode and stores the ratios on disk (:mod:`stitchkit.pipeline.magcache_ratios`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Mapping

import attrs
import torch

from stitchkit.errors import ConfigError
from stitchkit.protocols import CacheSetup, cache_context

ROLES = ("large", "small")
HALVES = ("uncond", "cond")  # the CFG halves in the model batch's row order (rows [0, B) then [B, 2B))


def normalize_cache_spec(cache: Any, path: str = "cache") -> dict[str, Any]:
    """``cache=`` as ``{role: spec}``: a spec (a name, a ``{"kind": ...}`` dict or a cache object) applies
    to the large model; ``{"large": spec, "small": spec}`` names either or both."""
    if cache is None:
        return {}
    if isinstance(cache, Mapping) and "kind" not in cache:
        unknown = [k for k in cache if k not in ROLES]
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}", "is neither `kind` nor a model role",
                              "write {kind: magcache, ...} for the large model, or {large: {...}, small: {...}}")
        return {role: spec for role, spec in cache.items() if spec is not None}
    return {"large": cache}


@attrs.define
class ModelCache:
    """One diffusers cache on one transformer for one generation (see the module docstring)."""

    model: torch.nn.Module
    cache: Any  # a cache plugin object (stitchkit.policies.caches)
    role: str
    calibrating: bool = False
    mag_ratios: tuple[float, ...] | None = None  # MagCache's, when the cache object names none
    calibrated: list[float] | None = None  # MagCache's ratios, read just before removal when calibrating
    _ours: list[tuple[torch.nn.Module, str]] = attrs.field(factory=list)
    _had_registry: set[int] = attrs.field(factory=set)  # ids of modules with a hook registry before attach
    _contexts: set[str] = attrs.field(factory=set)
    _last_step: dict[str, int] = attrs.field(factory=dict)  # context -> the last loop step it ran at
    _calls: dict[str, int] = attrs.field(factory=dict)  # context -> calls (a cache without at_step)
    split: bool = False  # True once the batch's state went per sample (see the module docstring)
    guided: bool = False  # set by attach: the generation runs two CFG halves

    @property
    def halves_apart(self) -> bool:
        """One state per CFG half (the cache's ``separate_cfg``, in a guided generation)."""
        return self.guided and bool(getattr(self.cache, "separate_cfg", False))

    def attach(self, *, num_steps: int, guided: bool, current_timestep: Callable[[], float]) -> None:
        """Apply the cache's diffusers hooks to the model for a generation of ``num_steps``."""
        setup = CacheSetup(num_steps=num_steps, guided=guided, current_timestep=current_timestep,
                           mag_ratios=self.mag_ratios, calibrate=self.calibrating)
        self.guided = guided
        before = {id(m): list(m._diffusers_hook._hook_order) for m in self.model.modules()
                  if hasattr(m, "_diffusers_hook")}
        self._had_registry = set(before)
        try:
            self.cache.apply(self.model, setup)
        finally:  # what got registered is ours to remove, even when apply failed half-way
            for m in self.model.modules():
                registry = getattr(m, "_diffusers_hook", None)
                if registry is None:
                    continue
                known = before.get(id(m), [])
                self._ours += [(m, name) for name in registry._hook_order if name not in known]
            self._invalidate()

    def context_name(self, samples: tuple[int, ...] | None, half: int | None = None) -> str:
        name = self.role if samples is None else f"{self.role}:{','.join(map(str, samples))}"
        return name if half is None else f"{name}:{HALVES[half]}"

    def call(self, fn: Callable[[], torch.Tensor], samples: tuple[int, ...] | None = None,
             half: int | None = None, **where: Any) -> torch.Tensor:
        """``fn()`` inside ``model.cache_context`` (``where``: step_index, timestep, ... for the context),
        the cache's clock set to the loop's ``step_index`` first; ``half`` (0 uncond, 1 cond): a call on
        that CFG half's rows only, in its own context, the cache told which half (``at_step(..., half=)``)."""
        name = self.context_name(samples, half)
        self._contexts.add(name)
        step = where["step_index"]
        resumed = name in self._last_step and self._last_step[name] != step - 1
        with cache_context(self.model, name, **where):
            at_step = getattr(self.cache, "at_step", None)
            if at_step is not None:
                at_step(self.model, step, resumed, **({} if half is None else {"half": HALVES[half]}))
            elif self._calls.get(name, 0) != step:
                raise ConfigError(f"cache.{self.role}", f"{type(self.cache).__name__} counts its own calls, and the "
                                  f"{self.role} model first runs through it at step {step} of the loop, not at call "
                                  f"{self._calls.get(name, 0)}", "give the cache an at_step(model, step, resumed) "
                                  "that sets its clock to the loop's, or run that model at every step")
            out = fn()
        self._last_step[name] = step
        self._calls[name] = self._calls.get(name, 0) + 1
        return out

    def per_sample(self, batch: int, halves: int) -> None:
        """From now on one state per sample: every context-keyed hook state of the whole batch is split
        into one per sample (each tensor's rows ``b`` and ``batch + b``), under ``"role:b"``; with the CFG
        halves apart, each half's state (row ``b`` of its ``batch`` rows) under ``"role:b:uncond"``, ...."""
        if self.split:
            return
        if not getattr(self.cache, "per_sample_state", True):
            raise ConfigError(f"cache.{self.role}", f"{type(self.cache).__name__} keeps one state per hook, which "
                              "samples of a batch in different stages cannot share", "generate one prompt at a "
                              "time (sampler.batch_size: 1), or use magcache, first-block or taylorseer")
        self.split = True
        apart = self.halves_apart
        for half in (range(halves) if apart else [None]):
            whole = self.context_name(None, half)
            for manager in _state_managers(self.model):
                state = manager._state_cache.pop(whole, None)
                if state is None:
                    continue
                for b in range(batch):
                    rows = torch.tensor([b] if apart else [h * batch + b for h in range(halves)])
                    manager._state_cache[self.context_name((b,), half)] = _rows_of(
                        state, rows, batch if apart else batch * halves)
            if whole in self._last_step:
                last, calls = self._last_step.pop(whole), self._calls.pop(whole)
                for b in range(batch):
                    name = self.context_name((b,), half)
                    self._last_step[name], self._calls[name] = last, calls

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """The model with every one of our hooks out of the way (a masked call): each hooked module's
        ``forward`` is, for the duration, the one it had before our first hook on it."""
        saved = []
        for m in {id(m): m for m, _ in self._ours}.values():
            registry = m._diffusers_hook
            first = min(registry._hook_order.index(n) for mm, n in self._ours if mm is m)
            ref = registry._fn_refs[first]
            saved.append((m, m.forward))
            m.forward = ref.original_forward if ref.original_forward is not None else ref.forward
        try:
            yield
        finally:
            for m, forward in saved:
                m.forward = forward

    def remove(self) -> None:
        """Take our hooks off (innermost last, as diffusers' registry expects), and the registries we
        (or diffusers' ``cache_context``) created; read MagCache's calibrated ratios first when calibrating."""
        try:
            if self.calibrating and self._contexts:
                self.calibrated = self.cache.calibration_ratios(self.model, sorted(self._contexts)[0])
        finally:
            for m, name in reversed(self._ours):
                m._diffusers_hook.remove_hook(name, recurse=False)
            for m in self.model.modules():
                registry = getattr(m, "_diffusers_hook", None)
                if registry is not None and id(m) not in self._had_registry and not registry.hooks:
                    del m._diffusers_hook
            self._ours = []
            self._invalidate()

    def _invalidate(self) -> None:
        for m in self.model.modules():
            if hasattr(m, "_diffusers_hook"):
                m._diffusers_hook._child_registries_cache = None


def _state_managers(model: torch.nn.Module) -> list[Any]:
    """Every diffusers ``StateManager`` of a stateful hook under ``model``, once each."""
    from diffusers.hooks.hooks import StateManager  # deferred: diffusers is heavy, plugins import this module

    found: dict[int, Any] = {}
    for m in model.modules():
        registry = getattr(m, "_diffusers_hook", None)
        for hook in ([] if registry is None else registry.hooks.values()):
            for value in vars(hook).values():
                if isinstance(value, StateManager):
                    found.setdefault(id(value), value)
    return list(found.values())


def _rows_of(value: Any, rows: torch.Tensor, total: int) -> Any:
    """A copy of a hook state (or any value in it) holding only ``rows`` of every tensor whose first
    dimension is the batch's ``total`` rows; everything else (scalars, configs) copied as it is."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, rows.to(value.device)) if value.ndim and value.shape[0] == total else value
    if isinstance(value, dict):
        return {k: _rows_of(v, rows, total) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rows_of(v, rows, total) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        out = copy.copy(value)
        for k, v in vars(value).items():
            setattr(out, k, _rows_of(v, rows, total))
        return out
    return value


def hooked_modules(model: torch.nn.Module) -> list[tuple[str, list[str]]]:
    """Every submodule of ``model`` holding diffusers hooks, with their names: ``[]`` for a clean model."""
    return [(name, list(m._diffusers_hook._hook_order)) for name, m in model.named_modules()
            if hasattr(m, "_diffusers_hook") and m._diffusers_hook._hook_order]
