"""MagCache's ``separate_cfg``: one accumulator per CFG half, as two separate CFG calls keep them.

The reference is built without stitchkit's loop: diffusers' own ``StableDiffusion3Pipeline`` (its CFG, its
scheduler step) whose transformer call is split by hand into the unconditional rows and the conditional rows,
each sent to its own copy of the transformer carrying its own ``apply_mag_cache`` (so two hooks, two configs,
two states: nothing shared). The halves get different hand-made ratios, so they skip at different steps.
"""

import copy

import pytest
import torch
from diffusers.hooks import MagCacheConfig, apply_mag_cache

import stitchkit.loop.caches
from stitchkit import ConfigError
from stitchkit.protocols import cache_context

STEPS = 8
ARGS = dict(prompt=["a red circle", "a blue square"], height=128, width=128, num_inference_steps=STEPS,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent")
COND = [1.0] * STEPS  # "nothing changes": skips as much as max_skip_steps allows
UNCOND = [1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 4.0, 1.0]  # a reset at steps 2 and 6: skips elsewhere than COND
MAGCACHE = {"kind": "magcache", "threshold": 0.5, "max_skip_steps": 2, "mag_ratios": COND}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _attention_calls(model, seen):
    return [block.attn.to_q.register_forward_hook(lambda *a: seen.__setitem__(0, seen[0] + 1))
            for block in model.transformer_blocks]


def _reference(large):
    """diffusers' pipeline, its transformer call split into two halves on two MagCache'd copies; the steps
    (calls) at which each half's copy ran attention."""
    tf = large.transformer
    halves = {}
    for name, ratios in (("uncond", UNCOND), ("cond", COND)):
        twin = copy.deepcopy(tf)
        apply_mag_cache(twin, MagCacheConfig(threshold=0.5, max_skip_steps=2, num_inference_steps=STEPS,
                                             mag_ratios=ratios))
        halves[name] = twin
    computed = {"uncond": [], "cond": []}

    def split(*, hidden_states, timestep, encoder_hidden_states, pooled_projections, **kwargs):
        n = hidden_states.shape[0] // 2
        outs = []
        for name, rows in (("uncond", slice(0, n)), ("cond", slice(n, None))):
            twin, seen = halves[name], [0]
            handles = _attention_calls(twin, seen)
            with cache_context(twin, name):
                outs.append(twin(hidden_states=hidden_states[rows], timestep=timestep[rows],
                                 encoder_hidden_states=encoder_hidden_states[rows],
                                 pooled_projections=pooled_projections[rows], **kwargs)[0])
            for h in handles:
                h.remove()
            computed[name].append(seen[0] > 0)
        return (torch.cat(outs),)

    tf.forward = split
    try:
        images = large(**ARGS, generator=_gen()).images
    finally:
        del tf.forward
    return images, {name: [i for i, ran in enumerate(steps) if ran] for name, steps in computed.items()}


def _spy(monkeypatch, model):
    """``{context: [steps]}``: the loop steps at which each cache context's call ran attention."""
    computed: dict[str, list[int]] = {}
    original = stitchkit.loop.caches.ModelCache.call

    def spy(self, fn, samples=None, half=None, **where):
        seen = [0]
        handles = _attention_calls(model, seen)
        try:
            return original(self, fn, samples, half=half, **where)
        finally:
            for h in handles:
                h.remove()
            if seen[0]:
                computed.setdefault(self.context_name(samples, half), []).append(where["step_index"])

    monkeypatch.setattr(stitchkit.loop.caches.ModelCache, "call", spy)
    return computed


def test_separate_cfg_equals_two_separate_cfg_calls_each_with_its_own_accumulator(tiny_pair, stitch_pipe,
                                                                                   monkeypatch):
    large, _ = tiny_pair
    expected, ref_steps = _reference(large)
    # the two halves' own accumulators decide differently (so the test can tell one from the other)
    assert ref_steps["uncond"] != ref_steps["cond"] and len(ref_steps["cond"]) < STEPS
    computed = _spy(monkeypatch, large.transformer)
    out = stitch_pipe(**ARGS, generator=_gen(), switch="large",
                      cache={**MAGCACHE, "separate_cfg": True, "uncond_mag_ratios": UNCOND})
    assert (out.images - expected).abs().max() <= 1e-5
    assert computed == {"large:uncond": ref_steps["uncond"], "large:cond": ref_steps["cond"]}
    # the joint accumulator (one call, COND's ratios for both halves) is something else
    joint = stitch_pipe(**ARGS, generator=_gen(), switch="large", cache=MAGCACHE).images
    assert (joint - expected).abs().max() > 1e-4


def test_separate_cfg_in_a_mixed_batch_keeps_each_samples_halves(stitch_pipe, tiny_pair, monkeypatch):
    """Samples in different stages: each sample's halves in their own contexts, the same steps as alone."""
    from tests.test_cache_clock import PerSample, Tail

    large, _ = tiny_pair
    spec = {**MAGCACHE, "separate_cfg": True, "uncond_mag_ratios": UNCOND}
    alone = []
    for b, prompt in enumerate(ARGS["prompt"]):
        computed = _spy(monkeypatch, large.transformer)
        img = stitch_pipe(**{**ARGS, "prompt": [prompt]}, generator=[_gen(b)], switch="large", cache=spec).images
        alone.append((img, dict(computed)))
        monkeypatch.undo()
    # sample 1 leaves the large model at step 5: from then on sample 0 runs alone, in its own contexts
    switch = PerSample([Tail(first_small=STEPS), Tail(first_small=5)])
    computed = _spy(monkeypatch, large.transformer)
    out = stitch_pipe(**ARGS, generator=[_gen(0), _gen(1)], switch=switch, cache=spec)
    assert (out.images[0] - alone[0][0][0]).abs().max() <= 1e-5
    for half in ("uncond", "cond"):
        assert computed[f"large:{half}"] == [s for s in alone[1][1][f"large:{half}"] if s < 5]
        assert computed[f"large:{half}"] + computed.get(f"large:0:{half}", []) == alone[0][1][f"large:{half}"]
    assert computed["large:0:uncond"] != computed.get("large:0:cond", [])


def test_unguided_separate_cfg_changes_nothing(stitch_pipe):
    args = {**ARGS, "guidance_scale": 1.0}
    plain = stitch_pipe(**args, generator=_gen(), switch="large", cache=MAGCACHE).images
    apart = stitch_pipe(**args, generator=_gen(), switch="large",
                        cache={**MAGCACHE, "separate_cfg": True, "uncond_mag_ratios": UNCOND}).images
    assert torch.equal(plain, apart)


@pytest.mark.parametrize("cache, words", [
    ({"kind": "magcache", "separate_cfg": True}, "separate_cfg needs explicit mag_ratios"),
    ({**MAGCACHE, "uncond_mag_ratios": UNCOND}, "uncond_mag_ratios"),
])
def test_separate_cfg_refusals_are_one_line(stitch_pipe, cache, words):
    with pytest.raises(ConfigError) as err:
        stitch_pipe(**ARGS, generator=_gen(), switch="large", cache=cache)
    assert words in str(err.value) and "\n" not in str(err.value)
