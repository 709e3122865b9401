"""Per-sample decisions in a batch: one copy of each policy per sample, each seeing its own ``D_t``.

Before, a batch had one stage: the built-in switch policies compared the largest ``D_t`` of the batch, so a
prompt's switch steps depended on which other prompts shared its batch and the batch ran at the pace of its
slowest prompt (the HybridStitch paper's Fig. 8 shows switch steps differ per prompt). Here every sample
gets the decisions it would get alone: the engine (Algorithm 1 per sample) asks a :class:`SampleSwitch`
for one :class:`~stitchkit.protocols.Decision` per sample and a :class:`SampleMasks` for each hybrid
sample's mask, then groups the batch by decision (:mod:`stitchkit.loop.engine`).

A policy class that declares ``batched = True`` is not copied: it is handed the whole batch (a switch
policy's ``decide`` returns one Decision for all or one per sample; a mask policy is called once per group
of samples sharing a ratio).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from stitchkit.errors import ConfigError
from stitchkit.loop.protocol_checks import check_index_values, check_indices
from stitchkit.protocols import Decision, LoopState


def per_sample(policy: Any, batch: int, role: str) -> list[Any] | None:
    """One copy of ``policy`` per sample (sample 0 gets the object itself), or ``None`` when the policy's
    class says ``batched = True``. Call after ``policy.reset``.

    Copies rather than new instances: the engine may be handed a configured object whose constructor it
    cannot call again, and ``copy.deepcopy`` of a freshly reset policy is a freshly reset policy with the
    same parameters. Sample 0 keeping the object itself leaves a batch of one exactly as before (the caller's
    object holds the state, as it always did)."""
    if getattr(policy, "batched", False):
        return None
    copies = [policy]
    for _ in range(batch - 1):
        try:
            copies.append(copy.deepcopy(policy))
        except Exception as exc:  # a policy holding something uncopyable (a lock, a process handle)
            raise ConfigError(role, f"{type(policy).__name__} cannot be copied per sample ({exc})",
                              "make it deep-copyable, declare `batched = True` on the class, or pass one prompt"
                              ) from None
    return copies


def sample_state(state: LoopState, b: int) -> LoopState:
    """Sample ``b``'s view of the loop state: batch size 1, its own ``D_t`` and change map."""
    if state.batch_size == 1:
        return state
    return attrs.evolve(state, batch_size=1,
                        change=None if state.change is None else state.change[b:b + 1],
                        change_map=None if state.change_map is None else state.change_map[b:b + 1])


class SampleSwitch:
    """The switch policy of every sample of a batch of ``batch``, reset for a run of ``num_steps``."""

    def __init__(self, policy: Any, batch: int, num_steps: int) -> None:
        policy.reset(num_steps)
        self.policy, self.batch = policy, batch
        self.copies = per_sample(policy, batch, "switch")

    def decide(self, state: LoopState) -> tuple[list[Decision], list[LoopState] | None]:
        """One decision per sample, and each sample's state (``None`` for a batched policy)."""
        if self.copies is None:
            return _decisions(self.policy.decide(state), self.batch, type(self.policy).__name__), None
        states = [sample_state(state, b) for b in range(self.batch)]
        return [policy.decide(s) for policy, s in zip(self.copies, states)], states


class SampleMasks:
    """The mask policy of every sample of a batch of ``batch``, reset for a run."""

    def __init__(self, policy: Any, batch: int) -> None:
        policy.reset()
        self.policy = policy
        self.copies = per_sample(policy, batch, "mask")

    def select(self, state: LoopState, states: list[LoopState] | None, decisions: list[Decision],
               samples: list[int], ratio: float, device: torch.device) -> torch.Tensor:
        """The masks of ``samples`` (all hybrid at ``ratio``): ``(len(samples), m)`` on ``device``, each
        answer checked against the mask contract (:mod:`stitchkit.loop.protocol_checks`)."""
        n = state.num_tokens
        if self.copies is None or states is None:
            group = attrs.evolve(
                state, stage=decisions[samples[0]].stage, batch_size=len(samples),
                change=None if state.change is None else state.change[samples],
                change_map=None if state.change_map is None else state.change_map[samples])
            indices = self.policy.select(group, ratio)
            check_indices(indices, self.policy, len(samples), n, ratio)
        else:
            parts = []
            for b in samples:  # a policy without a change map builds them on the CPU
                part = self.copies[b].select(attrs.evolve(states[b], stage=decisions[b].stage), ratio)
                check_indices(part, self.copies[b], 1, n, ratio)
                parts.append(part.to(device))
            if len({p.shape[1] for p in parts}) > 1:  # one answered N (all tokens), another k
                raise ConfigError("mask", f"{type(self.policy).__name__}.select returned masks of "
                                  f"{sorted({p.shape[1] for p in parts})} tokens for samples at one ratio {ratio:g}",
                                  "return mask_size(ratio, N) tokens for every sample")
            indices = torch.cat(parts)
        check_index_values(indices, self.policy, n)  # range, order, uniqueness: one host sync per group
        return indices.to(device)


def _decisions(decided: Any, batch: int, name: str) -> list[Decision]:
    """A batched switch policy's answer: one Decision for every sample, or one per sample."""
    if isinstance(decided, Decision):
        return [decided] * batch
    if isinstance(decided, Sequence) and len(decided) == batch and all(isinstance(d, Decision) for d in decided):
        return list(decided)
    raise ConfigError("switch", f"{name}.decide returned {decided!r} for a batch of {batch}",
                      "a batched policy returns one Decision, or a sequence of one per sample")
