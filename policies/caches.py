"""diffusers' cache hooks as stitchkit plugins, under diffusers' names: ``magcache``, ``first-block``,
``taylorseer``, ``faster``, ``pab``.

Each factory returns a small object that builds diffusers' own config and calls diffusers' own
``diffusers.hooks.apply_*`` function; no cache algorithm is re-implemented here. What this file adds is only
what SD3 transformers need to run them at all (``/work/shared/NOTES-caches.md``, diffusers 0.42.1):

* FirstBlockCache subtracts the tail block's text output, which SD3's last block (``context_pre_only``)
  returns as ``None``: a pass-through hook, registered on that block *before* diffusers' own so that
  diffusers' hook sees it, hands back the block's input text states instead. The transformer discards the
  last block's text output anyway, so the model's output is unchanged.
* TaylorSeer's lite mode fails on that same ``None``: it is not offered (the default mode works). In a
  hybrid method the large model's full steps run stitchkit's K/V-cache attention, which computes no text
  output for that block's attention either: TaylorSeer and FasterCache get the same pass-through there.
* FasterCache defaults to video tensors and splits guidance halves only for the inputs it lists: stitchkit
  sets ``tensor_format="BCHW"`` and adds ``pooled_projections`` to those inputs, and marks an unguided run
  as guidance-distilled (nothing to split).
* PAB and FasterCache ask for the current timestep through a callback: the engine's.
* **The loop's clock.** diffusers' hooks count their own calls (MagCache's ``step_index``, TaylorSeer's
  ``current_step``, PAB's and FasterCache's ``iteration``): inside a schedule the model does not run every
  step, and that count drifts from the loop's. Every cache here has ``at_step(model, step, resumed)``,
  called by :mod:`stitchkit.loop.caches` inside the call's ``cache_context`` just before the call: it sets
  the hook's counter to the loop's step (so it decides as it would alone) and, when the model did not run
  at the previous step (``resumed``), resets the state, so the model starts without a previous residual.

**Settings and their sources** (each default and preset cites where it comes from; diffusers 0.42.1,
Zehong-Ma/MagCache at df81cb1). The plain kinds are at diffusers' defaults; MagCache's presets per family
are its authors' settings, registered by each family (``stitchkit/families/*/magcache.py``); a setting tuned for the shapes pair lives in ``examples/peers.yaml`` under a
name that says so (``*-shapes``).

Each parameter is checked against its domain when the cache is built (issue 25): a negative or non-finite
threshold, a ratio outside [0, 1] or a skip range below 1 used to be accepted and do nothing, or something
else than asked (diffusers' configs do not check them).

The lifecycle (attach for one generation, a ``cache_context`` around every call, masked calls bypassing the
hooks, removal also on error) is :mod:`stitchkit.loop.caches`.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import CacheSetup, cache_context


def _at_least(low: float):
    """An attrs validator: a finite number ``>= low`` (thresholds, skip ranges, step counts)."""

    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and attribute.default is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise ValueError(f"{attribute.name} must be a finite number >= {low:g}, got {value!r}")

    return check


def _fraction(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An attrs validator: a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


def _hooks(model: torch.nn.Module, *names: str) -> list[Any]:
    """Every diffusers hook registered under ``model`` by one of ``names``, in module order."""
    found = []
    for m in model.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None:
            found += [registry.hooks[n] for n in names if n in registry.hooks]
    return found


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks in the order diffusers' block caches find them."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [block for name, sub in module.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(sub, torch.nn.ModuleList) for block in sub]


class _TextPassThrough:
    """A diffusers ``ModelHook`` for a ``context_pre_only`` block: its ``None`` text output becomes the text
    states it was given, so a block cache can take residuals of it (see the module docstring)."""

    name = "stitchkit_text_pass_through"

    @staticmethod
    def make():
        from diffusers.hooks import ModelHook

        class Hook(ModelHook):
            def pre_forward(self, module, *args, **kwargs):
                self.text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                return args, kwargs

            def post_forward(self, module, output):
                text, self.text = self.text, None
                if isinstance(output, tuple):  # the block's (text, image), the attention's (image, text)
                    return tuple(text if o is None else o for o in output)
                return output

        return Hook()


def _pass_text_through(module: torch.nn.Module) -> None:
    """Register :class:`_TextPassThrough` on ``module`` (before any cache hook goes on it)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(module).register_hook(_TextPassThrough.make(), _TextPassThrough.name)


def _pass_last_attention_text_through(model: torch.nn.Module) -> None:
    """The same for the last block's joint attention: stitchkit's K/V-cache processor (a hybrid method's
    full large steps) does not compute the text output a ``context_pre_only`` block discards, and an
    attention-level cache (TaylorSeer, FasterCache) would cache that ``None``."""
    attn = getattr(_blocks(model)[-1], "attn", None)
    if attn is not None and getattr(attn, "context_pre_only", False):
        _pass_text_through(attn)


def _iteration_at_step(model: torch.nn.Module, step: int, resumed: bool, *names: str) -> None:
    """PAB's and FasterCache's clock: each hook's own ``state.iteration`` (one state per hook, not per cache
    context), counted per call by diffusers; set to the loop's step, the state reset when resumed."""
    for hook in _hooks(model, *names):
        if resumed:
            hook.state.reset()
        hook.state.iteration = step


@attrs.frozen(kw_only=True)
class MagCache:
    """diffusers' MagCache (``apply_mag_cache``): skips whole steps while the accumulated magnitude-ratio
    error stays under ``threshold``. Without ``mag_ratios`` they are calibrated for the pair on first use and
    cached on disk (:mod:`stitchkit.loop.caches`). Defaults: diffusers' ``MagCacheConfig``
    (``hooks/mag_cache.py:110-112``); the authors' per-family settings are presets its families register
    (``magcache-flux``, ``magcache-wan2.1``: ``stitchkit/families/*/magcache.py``)."""

    kind = "magcache"
    threshold: float = attrs.field(default=0.06, validator=_at_least(0))
    max_skip_steps: int = attrs.field(default=3, validator=_at_least(0))
    retention_ratio: float = attrs.field(default=0.2, validator=_fraction)
    mag_ratios: tuple[float, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None
                                                        else tuple(float(x) for x in v))
    separate_cfg: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    uncond_mag_ratios: tuple[float, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None
                                                              else tuple(float(x) for x in v))

    def __attrs_post_init__(self) -> None:
        # separate_cfg: in a guided generation, one accumulator (and residual) per CFG half, each half run as
        # its own call in its own cache context (stitchkit.loop.caches), as Zehong-Ma/MagCache's Wan 2.1
        # original keeps them (MagCache4Wan2.1/magcache_generate.py:279-291, indexed by cnt % 2).
        if self.separate_cfg and self.mag_ratios is None:
            raise ValueError("separate_cfg needs explicit mag_ratios (calibration records one joint accumulator, "
                             "not one per CFG half): give mag_ratios (and uncond_mag_ratios), or separate_cfg=False")
        if self.uncond_mag_ratios is not None and not self.separate_cfg:
            raise ValueError("uncond_mag_ratios is the unconditional half's, used only with separate_cfg=True: "
                             "set separate_cfg=True, or drop uncond_mag_ratios")

    @property
    def needs_calibration(self) -> bool:
        return self.mag_ratios is None

    def apply(self, model: torch.nn.Module, setup: CacheSetup) -> None:
        from diffusers.hooks import MagCacheConfig, apply_mag_cache
        from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

        if setup.calibrate:  # one step more than the run, so diffusers never resets the ratios mid-run
            config = MagCacheConfig(calibrate=True, num_inference_steps=setup.num_steps + 1)
        else:
            ratios = self.mag_ratios if self.mag_ratios is not None else setup.mag_ratios
            config = MagCacheConfig(threshold=self.threshold, max_skip_steps=self.max_skip_steps,
                                    retention_ratio=self.retention_ratio, num_inference_steps=setup.num_steps,
                                    mag_ratios=torch.tensor(ratios))
        apply_mag_cache(model, config)
        if self.separate_cfg and not setup.calibrate:  # each half's ratios, interpolated as diffusers does
            uncond = config if self.uncond_mag_ratios is None else MagCacheConfig(
                num_inference_steps=setup.num_steps, mag_ratios=torch.tensor(self.uncond_mag_ratios))
            for hook in _hooks(model, _MAG_CACHE_LEADER_BLOCK_HOOK):
                hook.stitchkit_half_ratios = {"cond": config.mag_ratios, "uncond": uncond.mag_ratios}

    @staticmethod
    def at_step(model: torch.nn.Module, step: int, resumed: bool, half: str | None = None) -> None:
        """The loop's clock: ``mag_ratios[step]`` and the retention test read ``state.step_index``
        (diffusers 0.42.1 ``hooks/mag_cache.py:202-210``), which diffusers advances once per call (``:380``).
        ``half`` (``"uncond"``/``"cond"``, with ``separate_cfg``): that half's ratios for this call."""
        from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

        for hook in _hooks(model, _MAG_CACHE_LEADER_BLOCK_HOOK):
            state = hook.state_manager.get_state()
            if resumed:
                state.reset()
            state.step_index = step
            if half is not None and hasattr(hook, "stitchkit_half_ratios"):
                hook.config.mag_ratios = hook.stitchkit_half_ratios[half]

    @staticmethod
    def calibration_ratios(model: torch.nn.Module, context: str) -> list[float]:
        """The ratios diffusers' calibrate mode recorded under ``context`` (read before the hooks go)."""
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

        tail = _blocks(model)[-1]
        hook = tail._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK)
        with cache_context(model, context):
            return list(hook.state_manager.get_state().calibration_ratios)


@attrs.frozen(kw_only=True)
class FirstBlock:
    """diffusers' FirstBlockCache (``apply_first_block_cache``): skips the other blocks while the first
    block's residual changes by less than ``threshold`` (relative L1). Default: diffusers'
    ``FirstBlockCacheConfig`` (``hooks/first_block_cache.py:48``)."""

    kind = "first-block"
    threshold: float = attrs.field(default=0.05, validator=_at_least(0))
    needs_calibration = False

    def apply(self, model: torch.nn.Module, setup: CacheSetup) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        tail = _blocks(model)[-1]
        if getattr(tail, "context_pre_only", False):  # SD3's last block: no text output
            _pass_text_through(tail)
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=self.threshold))

    @staticmethod
    def at_step(model: torch.nn.Module, step: int, resumed: bool) -> None:
        """FirstBlockCache counts no steps; a resumed model starts without the residuals of its last call."""
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        if resumed:
            for hook in _hooks(model, _FBC_LEADER_BLOCK_HOOK):
                hook.state_manager.get_state().reset()


@attrs.frozen(kw_only=True)
class TaylorSeer:
    """diffusers' TaylorSeer (``apply_taylorseer_cache``): between full computations every ``cache_interval``
    steps, the cached modules' outputs are extrapolated by a Taylor series of order ``max_order``.
    ``cache_identifiers``: module-name patterns to cache (diffusers' default: attention only); on SD3,
    ``["^transformer_blocks\\.\\d+\\.(attn|ff|ff_context)$"]`` caches both feed-forwards too. Defaults:
    diffusers' ``TaylorSeerCacheConfig`` (``hooks/taylorseer_cache.py:82-85``)."""

    kind = "taylorseer"
    cache_interval: int = attrs.field(default=5, validator=_at_least(1))
    disable_cache_before_step: int = attrs.field(default=3, validator=_at_least(0))
    disable_cache_after_step: int | None = attrs.field(default=None, validator=_at_least(0))
    max_order: int = attrs.field(default=1, validator=_at_least(0))
    cache_identifiers: tuple[str, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None
                                                             else tuple(v))
    needs_calibration = False

    def apply(self, model: torch.nn.Module, setup: CacheSetup) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        _pass_last_attention_text_through(model)
        apply_taylorseer_cache(model, TaylorSeerCacheConfig(
            cache_interval=self.cache_interval, disable_cache_before_step=self.disable_cache_before_step,
            disable_cache_after_step=self.disable_cache_after_step, max_order=self.max_order,
            cache_identifiers=None if self.cache_identifiers is None else list(self.cache_identifiers),
            taylor_factors_dtype=model.dtype))

    @staticmethod
    def at_step(model: torch.nn.Module, step: int, resumed: bool) -> None:
        """The loop's clock: warm-up and interval read ``state.current_step``, which diffusers increments
        before each call (0.42.1 ``hooks/taylorseer_cache.py:228-235``), so it is set to ``step - 1``."""
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        for hook in _hooks(model, _TAYLORSEER_CACHE_HOOK):
            state = hook.state_manager.get_state()
            if resumed:
                state.reset()
            state.current_step = step - 1
            # A model with nothing to extrapolate from (its first step, or resumed) computes: the warm-up
            # test (:232) is widened to this step for this call only, and restored at the next.
            own = hook.__dict__.setdefault("_stitchkit_warmup", hook.disable_cache_before_step)
            hook.disable_cache_before_step = max(own, step + 1) if state.last_update_step is None else own


@attrs.frozen(kw_only=True)
class Faster:
    """diffusers' FasterCache (``apply_faster_cache``): attention outputs reused every
    ``spatial_attention_block_skip_range`` steps inside a timestep window, and the unconditional half
    approximated from the conditional one every ``unconditional_batch_skip_range`` steps. Defaults:
    diffusers' ``FasterCacheConfig`` (``hooks/faster_cache.py:135-151``)."""

    kind = "faster"
    spatial_attention_block_skip_range: int = attrs.field(default=2, validator=_at_least(1))
    spatial_attention_timestep_skip_range: tuple[int, int] = attrs.field(default=(-1, 681), converter=tuple)
    unconditional_batch_skip_range: int = attrs.field(default=5, validator=_at_least(1))
    unconditional_batch_timestep_skip_range: tuple[int, int] = attrs.field(default=(-1, 641), converter=tuple)
    alpha_low_frequency: float = 1.1
    alpha_high_frequency: float = 1.1
    needs_calibration = False

    def apply(self, model: torch.nn.Module, setup: CacheSetup) -> None:
        from diffusers.hooks import FasterCacheConfig, apply_faster_cache
        from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS

        _pass_last_attention_text_through(model)
        apply_faster_cache(model, FasterCacheConfig(
            spatial_attention_block_skip_range=self.spatial_attention_block_skip_range,
            spatial_attention_timestep_skip_range=self.spatial_attention_timestep_skip_range,
            unconditional_batch_skip_range=self.unconditional_batch_skip_range,
            unconditional_batch_timestep_skip_range=self.unconditional_batch_timestep_skip_range,
            alpha_low_frequency=self.alpha_low_frequency, alpha_high_frequency=self.alpha_high_frequency,
            tensor_format="BCHW", is_guidance_distilled=not setup.guided,
            current_timestep_callback=setup.current_timestep,
            _unconditional_conditional_input_kwargs_identifiers=[*_UNCOND_COND_INPUT_KWARGS_IDENTIFIERS,
                                                                 "pooled_projections"]))

    per_sample_state = False  # one state per hook (faster_cache.py:187-215), not per cache context

    @staticmethod
    def at_step(model: torch.nn.Module, step: int, resumed: bool) -> None:
        from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

        _iteration_at_step(model, step, resumed, _FASTER_CACHE_DENOISER_HOOK, _FASTER_CACHE_BLOCK_HOOK)


@attrs.frozen(kw_only=True)
class PAB:
    """diffusers' Pyramid Attention Broadcast (``apply_pyramid_attention_broadcast``): attention outputs
    broadcast over ``spatial_attention_block_skip_range`` steps inside the timestep window. Defaults:
    diffusers' ``PyramidAttentionBroadcastConfig`` window (``hooks/pyramid_attention_broadcast.py:78``) and
    the range 2 of its docstring example (``:208-209``) and of its fallback (``:227``): the config's own
    default range is ``None``, which broadcasts nothing on an SD3 block (joint attention only)."""

    kind = "pab"
    spatial_attention_block_skip_range: int = attrs.field(default=2, validator=_at_least(1))
    spatial_attention_timestep_skip_range: tuple[int, int] = attrs.field(default=(100, 800), converter=tuple)
    needs_calibration = False

    def apply(self, model: torch.nn.Module, setup: CacheSetup) -> None:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=self.spatial_attention_block_skip_range,
            spatial_attention_timestep_skip_range=self.spatial_attention_timestep_skip_range,
            current_timestep_callback=setup.current_timestep))

    per_sample_state = False  # one state per hook (pyramid_attention_broadcast.py:153), not per context

    @staticmethod
    def at_step(model: torch.nn.Module, step: int, resumed: bool) -> None:
        from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

        _iteration_at_step(model, step, resumed, _PYRAMID_ATTENTION_BROADCAST_HOOK)


CACHES: dict[str, Any] = {c.kind: c for c in (MagCache, FirstBlock, TaylorSeer, Faster, PAB)}

@hookimpl
def register_caches(register) -> None:
    for kind, factory in CACHES.items():
        register(kind, factory)
