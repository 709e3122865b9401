"""The small model as the cache's corrector (issue 21): ``Decision(reuse="corrected")`` in the loop, checked
against the transformers called directly on diffusers' own prompt encoding, and the ``small-corrector``
policy's rule against a reference that recomputes it from the whole history every step."""

import pytest
import torch
from hypothesis.stateful import run_state_machine_as_test

from stitchkit.cost.latency import Costs, predict_from_steps
from stitchkit.errors import ConfigError
from stitchkit.loop.trace import latency_steps
from stitchkit.protocols import Decision, LoopState
from stitchkit.registry import get_registry
from stitchkit.testing import switch_policy_machine

STEPS = 6
GUIDANCE = 4.0
ARGS = {"prompt": ["a red circle", "a blue square"], "height": 128, "width": 128, "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE, "max_sequence_length": 8, "output_type": "latent"}
N = (128 // 8 // 2) ** 2

LARGE = Decision(stage=1, large=True, small=False)
SMALL = Decision(stage=0, large=False, small=True)
ANCHOR = Decision(stage=1, large=True, small=True, reuse="corrected")
CORRECTED = Decision(stage=1, large=False, small=True, reuse="corrected")


class Schedule:
    """A switch policy playing a fixed list of decisions (one per step, or one tuple per step per sample)."""

    change_measure = "small-output"
    may_mask = False
    batched = True

    def __init__(self, decisions, correction_gain=None):
        self.decisions = decisions
        if correction_gain is not None:
            self.correction_gain = correction_gain

    def reset(self, num_steps):
        pass

    def decide(self, state):
        return self.decisions[state.step]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _guided(model, latents, timestep, embeds, pooled):
    """``model``'s guided output on ``latents`` at ``timestep``: both CFG halves, then uncond + g (cond - uncond)."""
    x = torch.cat([latents] * 2)
    out = model(hidden_states=x, timestep=timestep.expand(x.shape[0]), encoder_hidden_states=embeds,
                pooled_projections=pooled, return_dict=False)[0]
    uncond, cond = out.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


def test_decision_corrected_needs_the_small_model_and_is_neither_hybrid_nor_masked():
    with pytest.raises(ValueError, match="needs small=True"):
        Decision(stage=0, large=True, small=False, reuse="corrected")
    assert not ANCHOR.hybrid and not ANCHOR.masked and ANCHOR.corrected
    assert not CORRECTED.masked and CORRECTED.corrected
    with pytest.raises(ValueError, match="cannot both run it and reuse"):
        Decision(stage=0, large=False, small=True, reuse="as-is")


@pytest.mark.parametrize("gain", [None, 0.5])
def test_a_corrected_step_is_the_anchors_large_output_plus_the_small_models_change(tiny_pair, stitch_pipe, gain):
    """Against the two transformers called directly on diffusers' own ``encode_prompt``: an anchor step's
    prediction is the large model's, a corrected step's ``L_k + g (S_t - S_k)`` (guidance is linear), ``g``
    the policy's ``correction_gain`` (1 where it has none)."""
    large_pipe, small = tiny_pair
    schedule = [LARGE, ANCHOR, CORRECTED, CORRECTED, ANCHOR, CORRECTED]
    seen = []
    latents = torch.randn(2, 16, 16, 16, generator=_gen(3))
    out = stitch_pipe(**ARGS, latents=latents, switch=Schedule(schedule, gain), callback=seen.append)
    embeds, neg, pooled, neg_pooled = large_pipe.encode_prompt(
        prompt=ARGS["prompt"], prompt_2=None, prompt_3=None, do_classifier_free_guidance=True,
        negative_prompt="", max_sequence_length=8)
    embeds, pooled = torch.cat([neg, embeds]), torch.cat([neg_pooled, pooled])
    inputs = [latents] + [s["latents"] for s in seen[:-1]]  # step i's input: step i-1's scheduler output
    anchor_large = anchor_small = None
    for i, (decision, info) in enumerate(zip(schedule, seen)):
        with torch.no_grad():
            small_now = _guided(small, inputs[i], info["timestep"], embeds, pooled)
            large_now = _guided(large_pipe.transformer, inputs[i], info["timestep"], embeds, pooled)
        if decision is ANCHOR:
            anchor_large, anchor_small = large_now, small_now
            expected = large_now
        elif decision is CORRECTED:
            expected = anchor_large + (1.0 if gain is None else gain) * (small_now - anchor_small)
            assert (info["prediction"] - large_now).abs().max() > 1e-4  # it is not the large model's own
        else:
            expected = large_now
        assert (info["prediction"] - expected).abs().max() <= 1e-5, f"step {i}"
    assert [(r.large_tokens, r.small_tokens, r.reused_tokens) for r in out.trace] == [
        (N, 0, 0), (N, N, 0), (0, N, N), (0, N, N), (N, N, 0), (0, N, N)]
    # Priced as what ran: an anchor both models, a corrected step the small one.
    predicted = predict_from_steps(latency_steps(out.trace), Costs(large_ms=10.0, small_ms=2.0))
    assert (predicted.hybrid_large_ms, predicted.hybrid_small_ms) == pytest.approx((30.0, 10.0))


def test_corrector_anchors_are_per_sample(stitch_pipe):
    """Two samples anchoring at different steps, batched: each gets its image alone."""
    latents = torch.randn(2, 16, 16, 16, generator=_gen(9))
    per_sample = [[LARGE, ANCHOR, CORRECTED, CORRECTED, ANCHOR, CORRECTED],
                  [SMALL, ANCHOR, ANCHOR, CORRECTED, CORRECTED, CORRECTED]]
    both = stitch_pipe(**ARGS, latents=latents, switch=Schedule(list(zip(*per_sample))))
    for b, prompt in enumerate(ARGS["prompt"]):
        alone = stitch_pipe(**{**ARGS, "prompt": prompt}, latents=latents[b:b + 1], switch=Schedule(per_sample[b]))
        assert (both.images[b:b + 1] - alone.images).abs().max() <= 1e-5


def test_a_corrected_step_before_any_anchor_is_refused(stitch_pipe):
    with pytest.raises(ConfigError, match="before any anchor"):
        stitch_pipe(**ARGS, switch=Schedule([LARGE, CORRECTED] + [ANCHOR] * (STEPS - 2)))


def _state(step, num_steps, change):
    return LoopState(step=step, num_steps=num_steps, timestep=0.0, sigma=1.0, num_tokens=4, grid=(2, 2),
                     batch_size=1, change=None if change is None else torch.tensor([change]))


def corrector_reference(threshold, max_skip, small_head, large_head):
    """The rule recomputed from the whole history at every step: the steps since the last anchor ``k``, the
    sum of the changes handed at steps ``k + 2 .. t`` (each the measured change of the step before) plus the
    last one again as the estimate of step ``t``."""

    def make():
        handed, decided = [], []

        def decide(state):
            n, t = state.num_steps, state.step
            handed.append(None if state.change is None else float(state.change[0]))
            small_end = len([i for i in range(n) if (i + 1) / n <= small_head])
            large_end = min(n, small_end + int(large_head * n))
            if t < small_end:
                decision = Decision(stage=0, large=False, small=True)
            elif t < large_end:
                decision = ANCHOR
            else:
                anchors = [i for i, d in enumerate(decided) if d.corrected and d.large]
                last = handed[t]
                ok = False
                if anchors and last is not None:
                    k = anchors[-1]
                    estimate = sum(handed[i] for i in range(k + 2, t + 1)) + last
                    ok = (t - 1 - k) < max_skip and estimate <= threshold
                decision = CORRECTED if ok else ANCHOR
            decided.append(decision)
            return decision

        return decide

    return make


@pytest.mark.parametrize("params", [{"threshold": 0.3, "max_skip": 2, "small_head": 0.0, "large_head": 0.2},
                                    {"threshold": 1.0, "max_skip": 6, "small_head": 0.4, "large_head": 0.0},
                                    {"threshold": 0.0, "max_skip": 1, "small_head": 0.2, "large_head": 0.3}])
def test_small_corrector_follows_its_rule(params):
    registry = get_registry()
    def build():
        return registry.create("switch", {"kind": "small-corrector", **params})[0]

    machine = switch_policy_machine(build, reference=corrector_reference(**params), name=f"small-corrector{params}")
    from hypothesis import settings

    run_state_machine_as_test(machine, settings=settings(max_examples=60, deadline=None))


def test_small_corrector_hands_its_gain_to_the_loop():
    policy = get_registry().create("switch", {"kind": "small-corrector", "gain": 0.25})[0]
    assert policy.correction_gain == 0.25
    assert get_registry().create("switch", "small-corrector")[0].correction_gain == 0.5


def test_small_corrector_skips_within_its_budget_by_hand():
    policy = get_registry().create("switch", {"kind": "small-corrector", "threshold": 0.25, "max_skip": 3,
                                               "large_head": 0.2})[0]
    policy.reset(10)
    changes = [None, 0.9, 0.9, 0.05, 0.05, 0.05, 0.1, 0.05, 0.05, 0.05]
    kinds = []
    for t, d in enumerate(changes):
        decision = policy.decide(_state(t, 10, d))
        kinds.append("A" if decision.large else "c")
    # Steps 0-1 anchors (20 %); 2: an anchor (the change handed, 0.9, is over the budget); 3: estimate 0.05 (the last change) -> skip; 4: measured
    # 0.05 + estimate 0.05 -> skip; 5: 0.10 + 0.05 -> skip; 6: three skipped in a row (max_skip) -> anchor;
    # 7: 0.1 -> skip (only the estimate: no step since the anchor measured yet); 8: 0.05 + 0.05; 9: 0.10 + 0.05.
    assert "".join(kinds) == "AAAcccAccc"


@pytest.mark.parametrize("params, field", [({"threshold": -1}, "threshold"), ({"max_skip": 0}, "max_skip"),
                                           ({"gain": float("nan")}, "gain"),
                                           ({"small_head": 1.5}, "small_head"), ({"large_head": "x"}, "large_head")])
def test_small_corrector_refuses_bad_settings_in_one_line(params, field):
    with pytest.raises(ConfigError) as err:
        get_registry().create("switch", {"kind": "small-corrector", **params})
    assert field in str(err.value) and "\n" not in str(err.value)
