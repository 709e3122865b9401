"""Policy objects checked against their protocol (:mod:`stitchkit.protocols`) with one-line messages.

An outside policy missing a method used to fail deep inside the loop (``AttributeError`` at step 0), and one
returning the wrong thing failed further in (a shape error in the masked forward). :func:`check_policy` runs
when a policy is resolved (:meth:`stitchkit.registry.Registry.create`), before any model runs, and names
what the protocol asks for; :func:`check_decision` and :func:`check_indices` check what the engine gets back
at every step (cheap: a type test and a shape).
"""

from __future__ import annotations

from typing import Any

from stitchkit.errors import ConfigError
from stitchkit.loop.change import MEASURES
from stitchkit.protocols import Decision

__all__ = ["PROTOCOLS", "check_decision", "check_indices", "check_policy"]

#: Per kind: the attributes the engine needs (methods with their signature as the README documents them).
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "switch": ("change_measure", "reset(num_steps)", "decide(state) -> Decision"),
    "mask": ("reset()", "select(state, ratio) -> LongTensor (B, k)"),
    "context": ("reset()", "full(large, inputs) -> Tensor", "masked(large, inputs, indices) -> Tensor",
                "release()"),
}


def _asks(kind: str) -> str:
    return f"a {kind} policy needs " + ", ".join(PROTOCOLS[kind]) + " (see stitchkit.protocols)"


def check_policy(kind: str, policy: Any, path: str | None = None) -> Any:
    """``policy`` if it has every attribute its kind's protocol names (methods callable, ``change_measure`` a
    known measure), else a one-line :class:`ConfigError` at ``path`` naming the first missing one."""
    path = path or kind
    name = type(policy).__name__
    for item in PROTOCOLS.get(kind, ()):  # metrics are checked by their own ``check`` (experiments)
        attribute = item.split("(")[0]
        value = getattr(policy, attribute, None)
        if value is None:
            raise ConfigError(path, f"{name} has no {attribute}", _asks(kind))
        if "(" in item and not callable(value):
            raise ConfigError(path, f"{name}.{attribute} is not a method", _asks(kind))
    if kind == "switch":
        if policy.change_measure not in MEASURES:
            raise ConfigError(f"{path}.change_measure", f"{name} names an unknown measure {policy.change_measure!r}",
                              "known: " + ", ".join(sorted(MEASURES)))
    return policy


def check_decision(decision: Any, policy: Any, step: int) -> None:
    """A switch policy's ``decide`` must return a :class:`~stitchkit.protocols.Decision`."""

    if not isinstance(decision, Decision):
        raise ConfigError("switch", f"{type(policy).__name__}.decide returned a {type(decision).__name__} at "
                          f"step {step}", "return stitchkit.protocols.Decision(stage=..., large=..., small=...)")


def check_indices(indices: Any, policy: Any, batch: int, num_tokens: int) -> None:
    """A mask policy's ``select`` must return int64 token indices shaped ``(batch, k)``, ``0 < k <= N``."""
    import torch

    name = type(policy).__name__
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise ConfigError("mask", f"{name}.select returned {got}",
                          "return a torch.int64 tensor of token indices shaped (batch, k)")
    if indices.ndim != 2 or indices.shape[0] != batch or not 0 < indices.shape[1] <= num_tokens:
        raise ConfigError("mask", f"{name}.select returned shape {tuple(indices.shape)}",
                          f"return (batch, k) = ({batch}, k) indices with 0 < k <= {num_tokens}, sorted ascending")
