"""The hook specifications of stitchkit's plugin system (pluggy).

Every hook hands the plugin a ``register`` callback and collects what the plugin registers (the pattern of
simonw/llm). A plugin is any module or object with ``@stitchkit.hookimpl`` functions of these names; the
built-in policies in ``policies/`` are such modules and load through the same path as outside packages,
which are found through the ``stitchkit`` entry-point group.

Hooks are always called with keyword arguments, so an implementation may accept fewer arguments than the
spec and specs can grow without breaking plugins.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "stitchkit"
ENTRY_POINT_GROUP = "stitchkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(name, factory, presets=None)``: ``factory(**params)`` builds a fresh policy object;
#: ``presets`` maps preset names (``"hybridstitch-30"``) to parameter dicts for that factory.
Register = Callable[..., None]


@hookspec
def register_switch_policies(register: Register) -> None:
    """Register switch policies: which models run at each step, and in which stage.

    Call ``register(kind, factory, presets=None)`` once per policy. ``factory(**params)`` returns an object
    following :class:`stitchkit.protocols.SwitchPolicy`; its keyword parameters and defaults are what
    ``stitchkit plugins`` lists and what YAML may set. ``presets`` maps extra names to parameter dicts
    (``{"hybridstitch-30": {"mask_ratios": [0.3], ...}}``); a preset may also name the mask and context
    policies it implies with the reserved keys ``mask`` and ``context``, and the sampler settings its
    thresholds were chosen for with ``sampler: {steps, height, width}`` (:mod:`stitchkit.sampler`).
    """


@hookspec
def register_mask_policies(register: Register) -> None:
    """Register mask policies: which image tokens the large model recomputes in a hybrid stage.

    Call ``register(kind, factory)``; ``factory(**params)`` returns a :class:`stitchkit.protocols.MaskPolicy`.
    """


@hookspec
def register_context_providers(register: Register) -> None:
    """Register context providers: how the large model sees the image tokens it does not recompute.

    Call ``register(kind, factory)``; ``factory(**params)`` returns a
    :class:`stitchkit.protocols.ContextProvider`.
    """


@hookspec
def register_caches(register: Register) -> None:
    """Register caches a method may attach to the large or the small model (``cache=`` in Python,
    ``cache:`` in YAML): diffusers' hooks, by diffusers' names (``stitchkit.policies.caches``).

    Call ``register(kind, factory)``; ``factory(**params)`` returns an object with ``apply(model, setup)``
    (attaching the hooks for one generation, :class:`stitchkit.protocols.CacheSetup`) and
    ``needs_calibration``. :mod:`stitchkit.loop.caches` gives the hooks their ``cache_context``, keeps masked
    calls away from them and removes them after the generation.

    A cache whose hooks count their own calls must also have ``at_step(model, step, resumed)``: called in
    the call's ``cache_context`` just before each call, it sets the hooks' count to the loop's ``step`` and,
    when ``resumed`` (the model did not run at the previous step), resets their state. Without it, the cache
    is refused as soon as its model skips a step of the loop. ``per_sample_state = False`` declares hooks
    that keep one state per hook rather than per context (refused in a batch whose samples part ways).
    ``separate_cfg = True`` asks for one call (and context) per CFG half in a guided generation; its
    ``at_step`` then also gets ``half="uncond"`` or ``half="cond"``.
    """


@hookspec
def register_model_families(register: Register) -> None:
    """Register model families: how stitchkit runs a pipeline and masks its transformer.

    Call ``register(family)`` with a :class:`stitchkit.families.Family` (a pipeline adapter, a masked runner
    for its transformer class, the stock forward, the pair check, a FLOP model and a loader).
    :class:`stitchkit.StitchPipeline` picks the family whose ``accepts_pipeline`` takes the large pipeline.
    """


@hookspec
def register_pairs(register: Register) -> None:
    """Register model pairs by name (``pair: tiny-random`` in YAML, ``stitchkit profile --pair``).

    Call ``register(name, loader, description="")``; ``loader()`` returns ``(large, small)`` as
    :meth:`stitchkit.StitchPipeline.from_pipelines` takes them (a pipeline of a registered family, and the
    small transformer). A separate hook from the families: a pair is weights, and a package may ship pairs
    of a family it does not define.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register quality metrics for experiments (``metrics:`` in the YAML).

    Call ``register(kind, factory)``; ``factory(**params)`` returns an object following
    :class:`stitchkit.experiments.metrics.base.Metric`: what it needs (the image, the prompt, the large
    model's image of the same unit, a reference set), whether it is per image or per set, and ``check`` to
    refuse a run before any image is generated when its weights are missing.
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register trackers for experiments (``trackers:`` in the YAML): where each report's metrics, table and
    pictures are also logged (TensorBoard, W&B and MLflow are built in).

    Call ``register(kind, factory)``; ``factory(**params)`` returns an object following
    :class:`stitchkit.experiments.trackers.base.Tracker` (``start``, ``log_metrics``, ``log_image``,
    ``log_text``, ``close``) and raises :class:`~stitchkit.errors.ConfigError` when its package is missing.
    Only rank 0 of a data-parallel run logs.
    """


__all__: list[Any] = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "Register",
    "hookimpl",
    "hookspec",
    "register_context_providers",
    "register_mask_policies",
    "register_metrics",
    "register_trackers",
    "register_model_families",
    "register_pairs",
    "register_switch_policies",
]
