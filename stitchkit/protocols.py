"""What the engine hands policies, and what it expects back.

The engine runs the paper's Algorithm 1 and asks three kinds of plugin for every decision:

* a :class:`SwitchPolicy` decides, at the start of each step, which models run (``Decision``); it sees the
  change ``D_t`` (Eq. 9) of the step before, so Algorithm 1's "if diff < threshold: stage += 1" (lines 19-22)
  happens inside ``decide`` of the next step;
* a :class:`MaskPolicy` picks the image tokens the large model recomputes in a hybrid step (line 23);
* a :class:`ContextProvider` runs the large model, fully or on the masked tokens, and owns whatever context
  the masked tokens attend to (the previous step's K/V in the paper, line 10).

Policies hold per-generation state and are reset by the engine at the start of every generation. They see
only the :class:`LoopState`; they never touch models, except the context provider, whose job that is.

Decisions are per sample. Unless a switch or mask policy class declares ``batched = True``, the engine
keeps one copy of it per sample of a batch (the object itself for sample 0, ``copy.deepcopy`` of it, taken
after ``reset``, for the others) and hands each a :class:`LoopState` of that sample alone
(``batch_size == 1``). So a policy written for one sample works unchanged in a batch, and what a sample gets
does not depend on the other samples in its batch. The context provider is one object for the batch: the
K/V cache it manages has one row per sample and CFG half.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class LoopState:
    """The loop's state as policies see it at the start of step ``step``.

    ``change`` and ``change_map`` come from the step before (``None`` until two steps have been compared):
    ``change`` is ``D_t`` per sample, shape ``(B,)``; ``change_map`` the per-token change, shape ``(B, N)``
    (mean |ΔX| over channels and each token's p×p patch). ``B`` counts samples, not the two CFG halves.
    ``stage`` is the stage the switch policy decided for this step (``-1`` when handed to the switch policy
    itself, which owns the stage).
    """

    step: int
    num_steps: int
    timestep: float
    sigma: float
    num_tokens: int
    grid: tuple[int, ...]  # (rows, columns); (frames, rows, columns) for a video
    batch_size: int
    change: "torch.Tensor | None" = None
    change_map: "torch.Tensor | None" = None
    stage: int = -1


@attrs.frozen(kw_only=True)
class Decision:
    """Which models run at one step.

    * ``large`` alone: the large model on all tokens (its context provider records what it needs);
    * ``small`` alone: the small model on all tokens;
    * both: the hybrid step: small on all tokens, large on ``mask_ratio`` of them, stitched (Algorithm 1,
      lines 10-12). ``mask_ratio`` must be in (0, 1] then and is ignored otherwise.

    ``reuse`` makes the sample's previous prediction a third predictor (``"as-is"``, or ``"extrapolate"``:
    first order in the step index from its last two computed predictions, as TaylorSeer extrapolates
    features):

    * ``large`` with ``mask_ratio`` and ``reuse``: the large model on the masked tokens (with the context
      provider's K/V, as in a hybrid step), the previous prediction everywhere else (RAS);
    * neither model, ``reuse``: no model call at all this step (step-level caching).

    ``reuse="corrected"`` makes the small model the cache's corrector (issue 21) and needs ``small``:

    * ``large`` and ``small``: an *anchor* step: the large model on every token (its output is the step's
      prediction) and the small model on every token, both outputs kept as the sample's anchor;
    * ``small`` alone: the anchor's large prediction plus the small model's change since the anchor,
      ``L_k + g · (S_t - S_k)``: the large model is skipped, the small one carries what changed. ``g`` is the
      switch policy's optional class or instance attribute ``correction_gain`` (1 where absent).
    """

    stage: int
    large: bool
    small: bool
    mask_ratio: float | None = None
    reuse: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.reuse not in REUSE:
            raise ValueError(f"a Decision's reuse must be one of {REUSE}, got {self.reuse!r}")
        if not (self.large or self.small or self.reuse):
            raise ValueError("a Decision must run at least one model or reuse the previous prediction")
        if self.reuse == "corrected" and not self.small:
            raise ValueError("reuse='corrected' corrects with the small model: a Decision with it needs small=True")
        if self.small and self.reuse and self.reuse != "corrected":
            raise ValueError("the small model runs on every token: a Decision cannot both run it and reuse "
                             "(but reuse='corrected', where the small model corrects the large one's last output)")
        if self.masked and not (self.mask_ratio is not None and 0.0 < self.mask_ratio <= 1.0):
            kind = "hybrid" if self.small else "reuse"
            raise ValueError(f"a {kind} Decision with the large model needs mask_ratio in (0, 1], "
                             f"got {self.mask_ratio!r}")

    @property
    def corrected(self) -> bool:
        """A step of the small model as the cache's corrector: an anchor (``large``) or a corrected skip."""
        return self.reuse == "corrected"

    @property
    def hybrid(self) -> bool:
        return self.large and self.small and not self.corrected

    @property
    def masked(self) -> bool:
        """The large model runs on the masked tokens only (a hybrid step, or large-with-reuse)."""
        return self.large and not self.corrected and (self.small or self.reuse is not None)


#: What a Decision's ``reuse`` may be: nothing reused, the previous prediction as it is, extrapolated, or
#: the last anchor's large prediction corrected by the small model's change since (``"corrected"``).
REUSE = (None, "as-is", "extrapolate", "corrected")


@attrs.frozen(kw_only=True)
class ModelInputs:
    """One transformer call's inputs, CFG halves included (batch ``2B`` when guidance is on, [uncond, cond])."""

    hidden_states: "torch.Tensor"
    timestep: "torch.Tensor"
    encoder_hidden_states: "torch.Tensor"
    pooled_projections: "torch.Tensor | None" = None  # None for a family without a pooled text vector
    #: A guidance-distilled model's guidance scale as an input (FLUX.1-dev's ``guidance``), one value per row;
    #: None for a family without one. Classifier-free guidance is not this: it is two halves of the batch.
    guidance: "torch.Tensor | None" = None


@runtime_checkable
class SwitchPolicy(Protocol):
    """Decides which models run at each step. ``change_measure`` names the ``D_t`` it reads
    (a key of :data:`stitchkit.loop.change.MEASURES`).

    Optional class attributes the engine and tools read: ``may_mask = False`` for a policy that never
    takes a hybrid step (its large steps then need no K/V recording); ``stages``, one of ``"large"``,
    ``"small"``, ``"hybrid"`` per stage (for ``stitchkit.testing`` and ``stitchkit plan``); ``mask_ratios``,
    checked against Eq. 7-8 before a run; ``mask_measure``, the measure of the per-token change map a mask
    policy ranks (``None`` or absent: ``change_measure``'s); ``batched = True`` for a policy that decides for
    the whole batch at once: it is then not copied per sample, sees ``change`` of every sample, and ``decide``
    returns one :class:`Decision` for all samples or a sequence of one per sample.
    """

    change_measure: str

    def reset(self, num_steps: int) -> None:
        """Forget the last generation; ``num_steps`` is the new one's length."""

    def decide(self, state: LoopState) -> Decision:
        """The models to run at ``state.step``. Called exactly once per step, in order."""


@runtime_checkable
class MaskPolicy(Protocol):
    """Chooses the image tokens the large model recomputes in a hybrid step."""

    def reset(self) -> None:
        """Forget the last generation."""

    def select(self, state: LoopState, ratio: float) -> "torch.Tensor":
        """Token indices, shape ``(B, m)``, int64, sorted ascending, the same ``m`` for every sample.

        Copied per sample like a switch policy (``B == 1``) unless the class declares ``batched = True``;
        a batched mask policy is called once per group of samples sharing a mask ratio, ``state`` holding
        that group's change maps."""


@runtime_checkable
class ContextProvider(Protocol):
    """Runs the large model and owns the context its masked tokens attend to.

    ``large`` is the model family's masked runner (``Family.masked_runner``, e.g.
    :class:`stitchkit.families.sd3.masked.MaskedTransformer`; any object with the same methods):
    ``forward(inputs, record=..., rows=None, cache_rows=None)`` and ``forward_masked(inputs, indices, rows=None)``.

    When the samples of a batch are in different stages, the engine calls ``full``/``masked`` on a subset of
    the batch's rows and passes ``rows`` (int64, the cache rows those are: sample ``b`` of ``B`` owns rows
    ``b`` and ``B + b`` with CFG) and, to ``full``, ``cache_rows`` (the cache's row count); a provider hands
    them on to ``large``. A whole-batch call passes neither, so a provider without these keywords still
    works one sample at a time, and a batch that needs them refuses it with a one-line ConfigError.

    A provider whose masked step runs the large model on every token (the FullLarge ablation) sets the
    class attribute ``computes_all_tokens = True``, so the trace and the latency model count that work.
    """

    def reset(self) -> None:
        """Forget the last generation's context."""

    def full(self, large, inputs: ModelInputs, *, rows: "torch.Tensor | None" = None,
             cache_rows: int | None = None) -> "torch.Tensor":
        """The large model on every token: prediction shaped like ``inputs.hidden_states``."""

    def masked(self, large, inputs: ModelInputs, indices: "torch.Tensor", *,
               rows: "torch.Tensor | None" = None) -> "torch.Tensor":
        """The large model's prediction for ``indices`` (``(2B, m)``): tokens shaped ``(2B, m, p*p*C)``."""

    def release(self) -> None:
        """Free whatever the generation held (the K/V cache). Called when a generation ends, also on error."""


# -- change measures: the names a policy gives as ``change_measure`` / ``mask_measure`` ---------------------

#: Every change measure the loop computes (:data:`stitchkit.loop.change.MEASURES` implements them; a test
#: holds the two equal). A policy names one of these; the loop hands it ``D_t`` and the change map of it.
CHANGE_MEASURES: tuple[str, ...] = ("latent", "latent-std", "output", "small-output", "small-x0", "x0", "x0-prev")


def check_measure_name(name: object, path: str = "change") -> str:
    """``name`` if it names a change measure, else a ConfigError at ``path`` naming the known ones."""
    if not isinstance(name, str) or name not in CHANGE_MEASURES:
        from stitchkit.errors import ConfigError

        raise ConfigError(path, f"unknown change measure {name!r}", "known: " + ", ".join(CHANGE_MEASURES))
    return name


def check_measure(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """attrs validator: ``value`` names a known measure, else a ConfigError at the field's name."""
    check_measure_name(value, attribute.name)


def check_measure_or_none(instance: object, attribute: "attrs.Attribute", value: object) -> None:
    """attrs validator: ``None`` (take the policy's default measure) or a known measure's name."""
    if value is not None:
        check_measure_name(value, attribute.name)


# -- caches: what a cache plugin (``register_caches``) is handed ----------------------------------------------

@attrs.frozen(kw_only=True)
class CacheSetup:
    """What a cache needs to know about the generation it is attached for (``cache.apply(model, setup)``)."""

    num_steps: int
    guided: bool
    current_timestep: Callable[[], float]
    mag_ratios: tuple[float, ...] | None = None  # MagCache's, from its calibration
    calibrate: bool = False


def cache_context(model: "torch.nn.Module", name: str, **where: Any):
    """diffusers' ``cache_context`` for ``model``: its own method when its class mixes in ``CacheMixin``,
    else that very method applied to it (``SD3Transformer2DModel`` does not mix it in in 0.42.1; the method
    only sets the context on the hooks' state managers under the module)."""
    from diffusers.models.cache_utils import CacheMixin  # deferred: diffusers is heavy, plugins import this

    own = getattr(type(model), "cache_context", None)
    return (own or CacheMixin.cache_context)(model, name, **where)
