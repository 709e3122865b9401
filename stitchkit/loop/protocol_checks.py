"""Policy objects checked against their protocol (:mod:`stitchkit.protocols`) with one-line messages.

An outside policy missing a method used to fail deep inside the loop (``AttributeError`` at step 0), and one
returning the wrong thing failed further in (a shape error in the masked forward). :func:`check_policy` runs
when a policy is resolved (:meth:`stitchkit.registry.Registry.create`), before any model runs, and names
what the protocol asks for; :func:`check_decision` and :func:`check_indices` check what the engine gets back
at every step (cheap: a type test and a shape).

A mask policy's answer is checked in full, as ``stitchkit.testing.check_mask`` checks it in a property test
(README "A mask policy": ``k = mask_size(ratio, N)`` int64 indices per row, sorted ascending): shape and count
by :func:`check_indices` (metadata only, no device sync), then range, order and uniqueness of every row by
:func:`check_index_values` on the whole group's mask, one reduction and one host sync per masked group and
step. A mask of ``k + 1`` tokens, or unsorted rows, used to run silently and put a wrong ``large_tokens`` in
the trace (issue 25).
"""

from __future__ import annotations

from typing import Any

import torch

from stitchkit.errors import ConfigError
from stitchkit.loop.change import MEASURES
from stitchkit.masks import mask_size
from stitchkit.protocols import Decision

__all__ = ["PROTOCOLS", "check_decision", "check_index_values", "check_indices", "check_policy"]

#: What every mask refusal ends with: the contract, as README "A mask policy" states it.
_MASK_CONTRACT = "return int64 indices shaped (batch, mask_size(ratio, N)), each row sorted ascending, " \
                 "without repeats, in [0, N) (stitchkit.masks.mask_size; all N tokens, like `full`, also do)"

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


def check_indices(indices: Any, policy: Any, batch: int, num_tokens: int, ratio: float | None = None) -> None:
    """A mask policy's ``select`` must return int64 token indices shaped ``(batch, k)`` with
    ``k = mask_size(ratio, N)`` (or ``k = N``: every token, as the ``full`` mask answers at any ratio).
    Without ``ratio`` only ``0 < k <= N`` is asked. Metadata only: no device sync."""

    name = type(policy).__name__
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise ConfigError("mask", f"{name}.select returned {got}",
                          "return a torch.int64 tensor of token indices shaped (batch, k)")
    if indices.ndim != 2 or indices.shape[0] != batch or not 0 < indices.shape[1] <= num_tokens:
        raise ConfigError("mask", f"{name}.select returned shape {tuple(indices.shape)}",
                          f"return (batch, k) = ({batch}, k) indices with 0 < k <= {num_tokens}, sorted ascending")
    if ratio is not None:
        k = mask_size(ratio, num_tokens)
        if indices.shape[1] not in (k, num_tokens):
            raise ConfigError("mask", f"{name}.select returned {indices.shape[1]} tokens at ratio {ratio:g} of "
                              f"{num_tokens}, not mask_size(ratio, N) = {k}", _MASK_CONTRACT)


def check_index_values(indices: torch.Tensor, policy: Any, num_tokens: int) -> None:
    """Every row of a ``(B, k)`` mask strictly ascending (so sorted and unique) and in ``[0, N)``.

    One fused reduction and one host sync for the whole tensor (a group of samples' masks at one ratio);
    the per-row search for the message runs only when the check fails."""

    ok = (indices[:, 0] >= 0).all() & (indices[:, -1] < num_tokens).all()
    if indices.shape[1] > 1:
        ok = ok & (indices[:, 1:] > indices[:, :-1]).all()
    if bool(ok):  # the one host sync
        return
    name = type(policy).__name__
    rows = indices.cpu()
    for b, row in enumerate(rows.tolist()):
        shown = row if len(row) <= 8 else row[:8] + ["..."]
        if min(row) < 0 or max(row) >= num_tokens:
            bad = next(v for v in row if v < 0 or v >= num_tokens)
            problem = f"token {bad}, outside [0, {num_tokens})"
        elif len(set(row)) < len(row):
            problem = f"token {next(v for i, v in enumerate(row) if v in row[:i])} twice"
        elif row != sorted(row):
            problem = "tokens not sorted ascending"
        else:
            continue
        raise ConfigError("mask", f"{name}.select returned {problem} in row {b} ({shown})", _MASK_CONTRACT)
