"""The analytical latency model of HybridStitch (§3.2, Eq. 3-8): pure functions of numbers, no torch.

A plan of ``T`` steps switches at steps ``T_1 < … < T_{n+1}`` (0-based step indices, ``0 < T_1`` and
``T_{n+1} <= T``) and uses mask ratios ``M_1 > … > M_n``:

* steps ``[0, T_1)``: the large model alone, on every token (``M_0 = 1``);
* steps ``[T_i, T_{i+1})`` for ``i = 1..n``: hybrid steps, the large model on ``M_i`` of the image tokens and
  the small model on all of them; one such step costs ``L_l · M_i + L_s`` (the two sides of Eq. 6);
* steps ``[T_{n+1}, T)``: the small model alone (none when ``T_{n+1} = T``).

Then (Eq. 3) ``L_hybrid_large = Σ_{i=1}^{n+1} (T_i − T_{i−1}) · L_l · M_{i−1}`` with ``T_0 = 0, M_0 = 1``: the
large model runs up to ``T_{n+1}`` and not after. (Eq. 4) ``L_hybrid_small = L_s · (T − T_1)``: the small
model runs in every step from ``T_1`` on, hybrid and small-only alike. (Eq. 5) the saving is
``T · L_l − L_hybrid_large − L_hybrid_small``; the paper prints ``L_l −`` but means ``T · L_l``, the cost of
the large model alone. A plan is worth running when every hybrid step costs less than a large step
(Eq. 6, ``L_l · M_i + L_s < L_l``), which, with the ratios falling (Eq. 8, ``M_i > M_{i+1}``; the paper prints
``1 < i``, but the first pair counts as well), comes down to Eq. 7: ``M_1 < 1 − L_s / L_l``.

The paper prices a masked step at ``L_l · M``. It is not that cheap: the text tokens, the patch embedding
and per-layer overheads do not shrink with the mask (NOTES-sd3.md measured 0.21 at M = 0.1). When a profile
supplies measured masked costs ``L_l(M)``, :func:`predict` also gives the *refined* prediction that prices a
masked step at the profile's ``L_l(M)`` (see :func:`masked_cost`); both are reported.

A batch whose samples are in different stages runs one call per group of samples at a step (see
``stitchkit.loop.engine``); :func:`predict_from_calls` prices such a run as the calls it made, each at its
samples' share, so a mixed step costs the sum of its groups.

>>> costs = Costs(large_ms=10.0, small_ms=2.5)
>>> plan = Plan(steps=50, switch_steps=(10, 30, 40), mask_ratios=(0.4, 0.2))
>>> p = predict(plan, costs)
>>> p.hybrid_large_ms, p.hybrid_small_ms, p.predicted_ms, p.saving_ms
(200.0, 100.0, 300.0, 200.0)
>>> round(p.speedup, 4)
1.6667
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Iterable, Sequence

import attrs

from stitchkit.errors import ConfigError

__all__ = [
    "Costs",
    "Plan",
    "Prediction",
    "UnprofitablePlanWarning",
    "check_profitable",
    "masked_cost",
    "plan_steps",
    "predict",
    "predict_from_steps",
    "validate_costs",
    "validate_plan",
]


def _ratio_ms_pairs(value: Iterable[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """``[(ratio, ms), ...]`` (pairs, or a ``{ratio: ms}`` mapping) as a tuple sorted by ratio."""
    items = value.items() if hasattr(value, "items") else value
    return tuple(sorted((float(r), float(ms)) for r, ms in items))


@attrs.frozen(kw_only=True)
class Costs:
    """Per-step latencies of one pair at one size: ``L_l`` and ``L_s`` in ms, and the measured masked cost.

    ``masked_ms`` holds ``(M, L_l(M))`` pairs: the large model's cost on a fraction ``M`` of the image tokens,
    all text tokens kept (from ``stitchkit profile``); empty when only the paper's model is wanted.
    ``source`` says where the numbers came from: ``"given"`` (typed in), ``"profile"`` (measured) or
    ``"flops-estimate"`` (:func:`stitchkit.cost.profile.estimate_costs_from_configs`: an estimate, in units of one
    large step unless scaled).
    """

    large_ms: float = attrs.field(converter=float)
    small_ms: float = attrs.field(converter=float)
    masked_ms: tuple[tuple[float, float], ...] = attrs.field(default=(), converter=_ratio_ms_pairs)
    source: str = "given"

    def to_dict(self) -> dict:
        """A JSON-ready dict (the profile cache's format)."""
        return {
            "large_ms": self.large_ms,
            "small_ms": self.small_ms,
            "masked_ms": [[r, ms] for r, ms in self.masked_ms],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Costs":
        """The inverse of :meth:`to_dict`."""
        return cls(
            large_ms=data["large_ms"],
            small_ms=data["small_ms"],
            masked_ms=[tuple(pair) for pair in data.get("masked_ms", ())],
            source=data.get("source", "given"),
        )


@attrs.frozen(kw_only=True)
class Plan:
    """A HybridStitch schedule: ``steps`` = ``T``, ``switch_steps`` = ``(T_1, …, T_{n+1})``, ``mask_ratios`` =
    ``(M_1, …, M_n)``. Construction does not validate; :func:`validate_plan` does."""

    steps: int
    switch_steps: tuple[int, ...] = attrs.field(converter=tuple)
    mask_ratios: tuple[float, ...] = attrs.field(converter=tuple)


@attrs.frozen(kw_only=True)
class Prediction:
    """What the model predicts for one plan, in ms.

    ``large_only_ms`` = ``T · L_l``; ``hybrid_large_ms`` is Eq. 3, ``hybrid_small_ms`` Eq. 4, ``predicted_ms``
    their sum, ``saving_ms`` Eq. 5 and ``speedup`` = ``large_only_ms / predicted_ms``. The ``refined_*``
    fields price masked steps at the measured ``L_l(M)`` instead of ``L_l · M``; they are ``None`` when the
    costs hold no masked measurements. The small model's share is the same in both models.
    """

    large_only_ms: float
    hybrid_large_ms: float
    hybrid_small_ms: float
    predicted_ms: float
    saving_ms: float
    speedup: float
    refined_hybrid_large_ms: float | None = None
    refined_predicted_ms: float | None = None
    refined_saving_ms: float | None = None
    refined_speedup: float | None = None

    @property
    def refined(self) -> bool:
        """Whether the refined (measured masked cost) prediction is present."""
        return self.refined_predicted_ms is not None

    @property
    def best_predicted_ms(self) -> float:
        """The refined prediction when the costs hold measured masked costs, else the paper's (Eq. 3-5)."""
        return self.refined_predicted_ms if self.refined_predicted_ms is not None else self.predicted_ms

    def to_dict(self) -> dict:
        """The six keys of the paper's model, and the ``refined_*`` keys when the refined model ran."""
        data = attrs.asdict(self)
        return {k: v for k, v in data.items() if not (k.startswith("refined_") and v is None)}


class UnprofitablePlanWarning(UserWarning):
    """A plan breaks Eq. 6-8 and was let through (``allow_unprofitable``)."""


# ---------------------------------------------------------------------------------------------- validation


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_whole(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _fmt(x: float) -> str:
    """A number as a user wrote it: ``0.75``, ``10``, ``0.3333``."""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def validate_costs(costs: Costs) -> None:
    """Refuse latencies no model can have: ``L_l``, ``L_s`` and every ``L_l(M)`` finite and above 0, every
    profiled ``M`` in (0, 1) and none twice. Raises :class:`ConfigError` with a one-line message."""
    for name in ("large_ms", "small_ms"):
        value = getattr(costs, name)
        if not (_is_number(value) and value > 0):
            raise ConfigError(name, f"{_fmt(value)} is not a latency",
                              "must be a finite number of ms above 0")
    seen: set[float] = set()
    for i, (ratio, ms) in enumerate(costs.masked_ms):
        if not (_is_number(ratio) and 0.0 < ratio < 1.0):
            raise ConfigError(f"masked_ms[{i}]", f"ratio {_fmt(ratio)} is outside (0, 1)",
                              "a profiled mask ratio is a share of the image tokens, in (0, 1)")
        if ratio in seen:
            raise ConfigError(f"masked_ms[{i}]", f"ratio {_fmt(ratio)} is profiled twice",
                              "give each ratio once")
        seen.add(ratio)
        if not (_is_number(ms) and ms > 0):
            raise ConfigError(f"masked_ms[{i}]", f"{_fmt(ms)} is not a latency",
                              "must be a finite number of ms above 0")


def validate_plan(plan: Plan, costs: Costs) -> None:
    """Refuse a plan the model cannot price (and costs it cannot use: :func:`validate_costs`).

    Switch steps must satisfy ``0 < T_1 < … < T_{n+1} <= T`` (``T_{n+1} = T``: no small-only stage), there
    must be one more of them than mask ratios, and each ratio must lie in (0, 1). Whether the plan pays off
    (Eq. 6-8) is :func:`check_profitable`'s question. Raises :class:`ConfigError`; its message is one line.
    """
    if not (_is_whole(plan.steps) and plan.steps >= 1):
        raise ConfigError("steps", f"{plan.steps!r} is not a step count",
                          "must be a whole number of at least 1")
    n = len(plan.mask_ratios)
    if len(plan.switch_steps) != n + 1:
        raise ConfigError(
            "switch_steps",
            f"{len(plan.switch_steps)} switch steps for {n} mask ratio{'s' if n != 1 else ''}",
            "Eq. 3 needs one more switch step than mask ratios "
            f"(T_1 … T_{{n+1}} for M_1 … M_n): {n + 1} here",
        )
    rule = f"switch steps must rise strictly: 0 < T_1 < … < T_{{n+1}} <= steps = {plan.steps}"
    previous = 0
    for i, t in enumerate(plan.switch_steps):
        path = f"switch_steps[{i}]"
        if not _is_whole(t):
            raise ConfigError(path, f"{t!r} is not a step index", "must be a whole number")
        if t <= previous:
            before = "0" if i == 0 else f"switch_steps[{i - 1}] = {previous}"
            raise ConfigError(path, f"{t} is not above {before}", rule)
        if t > plan.steps:
            raise ConfigError(path, f"{t} is past the last step (steps = {plan.steps})", rule)
        previous = t
    for i, m in enumerate(plan.mask_ratios):
        if not (_is_number(m) and 0.0 < m < 1.0):
            raise ConfigError(f"mask_ratios[{i}]", f"{_fmt(m)} is outside (0, 1)",
                              "a mask ratio is the fraction of image tokens the large model recomputes")
    validate_costs(costs)


def _profit_problems(plan: Plan, costs: Costs) -> list[ConfigError]:
    """Every way ``plan`` breaks Eq. 6-8, in the order of the equations (the plan is assumed valid)."""
    problems: list[ConfigError] = []
    ms = plan.mask_ratios
    bound = 1.0 - costs.small_ms / costs.large_ms
    # Eq. 7 (from Eq. 6 at the largest mask): M_1 < 1 − L_s / L_l.
    if ms and not ms[0] < bound:
        problems.append(ConfigError("mask_ratios[0]", f"{_fmt(ms[0])} breaks Eq. 7",
                                    f"it must be below 1 − Ls/Ll = {bound:.4g}"))
    if not ms and costs.small_ms >= costs.large_ms:
        # No hybrid stage: Eq. 6 reads L_s < L_l for the small-only steps.
        problems.append(ConfigError(
            "small_ms", f"{_fmt(costs.small_ms)} breaks Eq. 6",
            f"a small step must cost less than a large one (Ll = {_fmt(costs.large_ms)})"))
    # Eq. 8: M_i > M_{i+1} for every consecutive pair (the paper's "1 < i" would skip M_1 > M_2).
    for i in range(1, len(ms)):
        if not ms[i] < ms[i - 1]:
            problems.append(ConfigError(f"mask_ratios[{i}]", f"{_fmt(ms[i])} breaks Eq. 8",
                                        f"it must be below mask_ratios[{i - 1}] = {_fmt(ms[i - 1])}"))
    # Eq. 6 with the measured masked cost, for every hybrid stage: L_l(M_i) + L_s < L_l.
    if costs.masked_ms:
        for i, m in enumerate(ms):
            step = masked_cost(m, costs) + costs.small_ms
            if not step < costs.large_ms:
                problems.append(ConfigError(
                    f"mask_ratios[{i}]", f"{_fmt(m)} breaks Eq. 6 with the profiled masked cost",
                    f"Ll({_fmt(m)}) + Ls = {step:.4g} ms must be below Ll = {costs.large_ms:.4g} ms"))
    return problems


def check_profitable(plan: Plan, costs: Costs, *, allow_unprofitable: bool = False) -> tuple[str, ...]:
    """Refuse a plan whose hybrid steps cost more than large steps: Eq. 7 (``M_1 < 1 − L_s/L_l``), Eq. 8
    (``M_i > M_{i+1}``) and, when the costs hold a profile, Eq. 6 with the measured ``L_l(M_i)``.

    Raises :class:`ConfigError` for the first breach; with ``allow_unprofitable`` it warns
    (:class:`UnprofitablePlanWarning`) once per breach instead. Returns the breaches' one-line messages
    (empty when the plan pays off). Call :func:`validate_plan` first.
    """
    problems = _profit_problems(plan, costs)
    if problems and not allow_unprofitable:
        raise problems[0]
    for problem in problems:
        warnings.warn(str(problem), UnprofitablePlanWarning, stacklevel=2)
    return tuple(str(p) for p in problems)


# ---------------------------------------------------------------------------------------------- the model


def _grid(costs: Costs) -> tuple[list[float], list[float]]:
    """The profiled points with ``(1, L_l)`` appended (Costs keeps ``masked_ms`` sorted by ratio)."""
    xs = [r for r, _ in costs.masked_ms if r < 1.0] + [1.0]
    ys = [ms for r, ms in costs.masked_ms if r < 1.0] + [costs.large_ms]
    return xs, ys


def masked_cost(ratio: float, costs: Costs) -> float:
    """The large model's cost on a fraction ``ratio`` of the image tokens, from the profile.

    Linear interpolation over the profiled ``(M, L_l(M))`` points and ``(1, L_l)``. Below the smallest
    profiled ratio the first segment's line is extended toward ``M = 0``, where it meets the cost that does
    not shrink with the mask (text tokens, embeddings, per-layer overhead); it is held between 0 and the
    smallest measurement, so a noisy profile can neither go negative nor rise as the mask shrinks.
    ``ratio = 0`` means the large model did not run (0 ms); ``ratio >= 1`` is a full step (``L_l``). Without
    profiled points this is the paper's ``L_l · M``.
    """
    if ratio <= 0.0:
        return 0.0
    if ratio >= 1.0:
        return costs.large_ms
    if not costs.masked_ms:
        return costs.large_ms * ratio
    xs, ys = _grid(costs)
    if ratio <= xs[0]:
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        return min(max(ys[0] - slope * (xs[0] - ratio), 0.0), ys[0])
    j = bisect.bisect_left(xs, ratio)  # xs[j-1] < ratio <= xs[j]
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return y0 + (y1 - y0) * (ratio - x0) / (x1 - x0)


def plan_steps(plan: Plan) -> tuple[tuple[float, bool], ...]:
    """The plan as one ``(large_fraction, small_ran)`` pair per step: ``(1.0, False)`` before ``T_1``,
    ``(M_i, True)`` in ``[T_i, T_{i+1})``, ``(0.0, True)`` from ``T_{n+1}`` on (the form
    :func:`predict_from_steps` reads, and a run's trace yields)."""
    fractions = [1.0, *plan.mask_ratios]  # M_0 = 1
    bounds = [0, *plan.switch_steps]  # T_0 = 0
    out: list[tuple[float, bool]] = []
    for i in range(1, len(bounds)):
        out += [(float(fractions[i - 1]), i > 1)] * (bounds[i] - bounds[i - 1])
    out += [(0.0, True)] * (plan.steps - bounds[-1])
    return tuple(out)


def _prediction(large_only: float, large: float, small: float, refined_large: float | None) -> Prediction:
    predicted = large + small
    refined: dict = {}
    if refined_large is not None:
        refined_predicted = refined_large + small
        refined = dict(
            refined_hybrid_large_ms=refined_large,
            refined_predicted_ms=refined_predicted,
            refined_saving_ms=large_only - refined_predicted,
            refined_speedup=large_only / refined_predicted if refined_predicted > 0 else math.inf,
        )
    return Prediction(
        large_only_ms=large_only,
        hybrid_large_ms=large,
        hybrid_small_ms=small,
        predicted_ms=predicted,
        saving_ms=large_only - predicted,  # Eq. 5, with T · L_l for the printed "L_l"
        speedup=large_only / predicted if predicted > 0 else math.inf,
        **refined,
    )


def predict(plan: Plan, costs: Costs) -> Prediction:
    """Eq. 3-5 for a (validated) plan, and the refined prediction when ``costs`` holds a profile."""
    t_ = [0, *plan.switch_steps]  # T_0 = 0
    m_ = [1.0, *plan.mask_ratios]  # M_0 = 1
    # Eq. 3: L_hybrid_large = Σ_{i=1}^{n+1} (T_i − T_{i−1}) · L_l · M_{i−1}
    large = sum((t_[i] - t_[i - 1]) * costs.large_ms * m_[i - 1] for i in range(1, len(t_)))
    # Eq. 4: L_hybrid_small = L_s · (T − T_1)
    small = costs.small_ms * (plan.steps - plan.switch_steps[0])
    refined = None
    if costs.masked_ms:
        refined = sum((t_[i] - t_[i - 1]) * masked_cost(m_[i - 1], costs) for i in range(1, len(t_)))
    return _prediction(plan.steps * costs.large_ms, large, small, refined)


def predict_from_steps(steps: Iterable[tuple[float, bool]], costs: Costs) -> Prediction:
    """The same model summed step by step over ``(large_fraction, small_ran)`` pairs, e.g. a trace's
    ``large_tokens / N`` and whether the small model ran. A step costs ``L_l · f`` (refined: ``L_l(f)``)
    plus ``L_s`` when the small model ran (Eq. 6's left side); the baseline is ``len(steps) · L_l``.
    A step where neither ran (its prediction reused, :class:`stitchkit.protocols.Decision` ``reuse``) is
    free."""
    steps = list(steps)
    for i, (fraction, small_ran) in enumerate(steps):
        if not (_is_number(fraction) and 0.0 <= fraction <= 1.0):
            raise ConfigError(f"steps[{i}]", f"large fraction {fraction!r} is outside [0, 1]",
                              "the fraction of image tokens the large model ran on (0: it did not run)")
    large = sum(costs.large_ms * f for f, _ in steps)
    small = sum(costs.small_ms for _, ran in steps if ran)
    refined = sum(masked_cost(f, costs) for f, _ in steps) if costs.masked_ms else None
    return _prediction(len(steps) * costs.large_ms, large, small, refined)


def predict_from_calls(steps: Iterable[Iterable[tuple[str, float, int]]], costs: Costs, *,
                       batch: int) -> Prediction:
    """A batched run priced as the calls it made (``stitchkit.loop.trace.latency_calls``): per step, a list of
    ``(model, large_fraction or 1, samples)`` calls. A large call on ``k`` samples at fraction ``f`` costs
    ``k · L_l · f`` (refined: ``k · L_l(f)``), a small call ``k · L_s``: ``costs`` are one sample's, and a
    call on ``k`` samples is priced as ``k`` of them (no batching gain is assumed). A step whose samples were
    in different stages is priced as the sum of its groups' calls. The baseline is ``steps · batch · L_l``.
    At ``batch = 1`` this is :func:`predict_from_steps` of the same run."""
    steps = [list(calls) for calls in steps]
    if not (_is_whole(batch) and batch >= 1):
        raise ConfigError("batch", f"{batch!r} is not a batch size", "a whole number of at least 1")
    large = small = refined = 0.0
    for i, calls in enumerate(steps):
        for j, (model, fraction, samples) in enumerate(calls):
            if model not in ("large", "small"):
                raise ConfigError(f"steps[{i}][{j}]", f"unknown model {model!r}", "'large' or 'small'")
            if not (_is_number(fraction) and 0.0 < fraction <= 1.0):
                raise ConfigError(f"steps[{i}][{j}]", f"token share {fraction!r} is outside (0, 1]",
                                  "the share of image tokens the call ran on")
            if not (_is_whole(samples) and 1 <= samples <= batch):
                raise ConfigError(f"steps[{i}][{j}]", f"{samples!r} samples in a batch of {batch}",
                                  "a call runs on 1 to batch samples")
            if model == "large":
                large += samples * costs.large_ms * fraction
                refined += samples * masked_cost(fraction, costs)
            else:
                small += samples * costs.small_ms * fraction
    return _prediction(len(steps) * batch * costs.large_ms, large, small, refined if costs.masked_ms else None)
