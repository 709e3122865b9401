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


__all__: list[Any] = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "Register",
    "hookimpl",
    "hookspec",
    "register_context_providers",
    "register_mask_policies",
    "register_switch_policies",
]
