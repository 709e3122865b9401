"""Step-level reuse composed with any switch policy: from a stage on, every ``every``-th step makes no model
call and reuses (or first-order extrapolates) the sample's previous prediction.

A cache at the level of stitchkit's own decisions: where a diffusers cache hook skips blocks inside one
model, this skips the whole step, whichever model the inner policy would have run; the trace counts the
step's tokens as reused and the latency model prices it free. Composed with SRDiffusion or HybridStitch it is
"hybrid with reuse" of the peers table (``examples/peers.yaml``).
"""

from __future__ import annotations

from typing import Any

import attrs

from stitchkit.hookspecs import hookimpl
from stitchkit.protocols import Decision, LoopState


@attrs.define(kw_only=True)
class ReuseEvery:
    """``inner`` (a switch policy spec) decides; from stage ``from_stage`` on, every ``every``-th step
    after the stage is entered is replaced by ``Decision(reuse=...)`` (the stage itself is kept). The first
    step of each stage always runs a model, so there is a prediction of that stage to reuse."""

    inner: Any = "srdiffusion"
    every: int = 2
    from_stage: int = 1
    reuse: str = "extrapolate"
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    _stage: int | None = attrs.field(default=None, init=False, repr=False)
    _in_stage: int = attrs.field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.every, int) and self.every >= 2):
            raise ValueError(f"every must be an int >= 2, got {self.every!r}")
        if isinstance(self.inner, (str, dict)):
            raise ValueError(f"inner {self.inner!r} is a spec: build reuse-every through the registry "
                             "(registry.create, StitchPipeline(switch=...), YAML), or pass a policy object")
        self._policy = self.inner

    @property
    def change_measure(self) -> str:
        return self._policy.change_measure

    @property
    def may_mask(self) -> bool:
        return getattr(self._policy, "may_mask", True)

    def reset(self, num_steps: int) -> None:
        self._policy.reset(num_steps)
        self._stage, self._in_stage = None, 0

    def decide(self, state: LoopState) -> Decision:
        decision = self._policy.decide(state)
        if decision.stage != self._stage:
            self._stage, self._in_stage = decision.stage, 0
        else:
            self._in_stage += 1
        if decision.stage >= self.from_stage and self._in_stage % self.every == self.every - 1:
            return Decision(stage=decision.stage, large=False, small=False, reuse=self.reuse)
        return decision


def reuse_every(*, inner: Any = "srdiffusion", every: int = 2, from_stage: int = 1, reuse: str = "extrapolate",
                registry: Any = None) -> ReuseEvery:
    """The ``reuse-every`` factory: ``inner`` (a name, a ``{"kind": ...}`` spec or a policy object) is built
    by the ``registry`` that builds this policy, so an outside package's policy (an entry point) can be the
    inner one exactly as a built-in can. The registry is handed in (``CONTEXT_PARAMETERS``), never rebuilt."""
    if isinstance(inner, (str, dict)):
        if registry is None:
            raise ValueError("inner given by name needs the registry: build reuse-every through "
                             "registry.create('switch', {...}) or StitchPipeline(switch=...)")
        inner = registry.create("switch", inner, path="inner")[0]
    return ReuseEvery(inner=inner, every=every, from_stage=from_stage, reuse=reuse)


@hookimpl
def register_switch_policies(register) -> None:
    register("reuse-every", reuse_every)
