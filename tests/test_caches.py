"""diffusers' cache hooks inside stitchkit's loop, against diffusers' own pipeline with the same hooks."""

import contextlib
import json

import attrs
import pytest
import torch
from click.testing import CliRunner
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS

from stitchkit import ConfigError
from stitchkit.loop.caches import hooked_modules
from stitchkit.pipeline.magcache_ratios import magcache_dir
from stitchkit.protocols import cache_context

STEPS = 8
ARGS = dict(prompt=["a red circle", "a blue square"], height=128, width=128, num_inference_steps=STEPS,
            guidance_scale=4.0, max_sequence_length=8, output_type="latent")
RATIOS = [1.0] * STEPS  # "nothing changes": MagCache skips as much as max_skip_steps allows
HYBRID = {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _clock(transformer):
    """The current timestep, as PAB/FasterCache ask for it, read off the transformer's own inputs."""
    now = {"t": 1000.0}
    handle = transformer.register_forward_pre_hook(
        lambda m, args, kwargs: now.update(t=float(kwargs["timestep"].flatten()[0])), with_kwargs=True)
    return now, handle


def _pass_text(module):
    """What stitchkit registers on SD3's context_pre_only modules (see stitchkit.policies.caches)."""
    from stitchkit.policies.caches import _pass_text_through

    _pass_text_through(module)


# (stitchkit's cache=, how to apply the same hook with diffusers' own functions to a bare transformer)
CASES = {
    "magcache": ({"kind": "magcache", "threshold": 0.5, "max_skip_steps": 2, "mag_ratios": RATIOS},
                 lambda tf, now: apply_mag_cache(tf, MagCacheConfig(threshold=0.5, max_skip_steps=2,
                                                                    num_inference_steps=STEPS, mag_ratios=RATIOS))),
    "first-block": ({"kind": "first-block", "threshold": 0.3},
                    lambda tf, now: (_pass_text(tf.transformer_blocks[-1]),
                                     apply_first_block_cache(tf, FirstBlockCacheConfig(threshold=0.3)))),
    "taylorseer": ({"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2},
                   lambda tf, now: (_pass_text(tf.transformer_blocks[-1].attn), apply_taylorseer_cache(
                       tf, TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2,
                                                 taylor_factors_dtype=torch.float32)))),
    "pab": ({"kind": "pab", "spatial_attention_timestep_skip_range": [0, 1000]},
            lambda tf, now: apply_pyramid_attention_broadcast(tf, PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000),
                current_timestep_callback=lambda: now["t"]))),
    "faster": ({"kind": "faster", "spatial_attention_timestep_skip_range": [-1, 1000],
                "unconditional_batch_timestep_skip_range": [-1, 1000], "unconditional_batch_skip_range": 2},
               lambda tf, now: (_pass_text(tf.transformer_blocks[-1].attn), apply_faster_cache(
                   tf, FasterCacheConfig(spatial_attention_timestep_skip_range=(-1, 1000),
                                         unconditional_batch_timestep_skip_range=(-1, 1000),
                                         unconditional_batch_skip_range=2, tensor_format="BCHW",
                                         current_timestep_callback=lambda: now["t"],
                                         _unconditional_conditional_input_kwargs_identifiers=[
                                             *_UNCOND_COND_INPUT_KWARGS_IDENTIFIERS, "pooled_projections"])))),
}


def _strip(transformer):
    """Remove every diffusers hook from ``transformer`` with diffusers' own registry."""
    for _, module in list(transformer.named_modules()):
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry._hook_order)[::-1]:
                registry.remove_hook(name, recurse=False)
            del module._diffusers_hook


@contextlib.contextmanager
def _count_work(transformer):
    """Counts, per call, the attention projections and feed-forwards that really ran (a skipped block or a
    reused attention runs neither, though the block module itself is still called)."""
    counts = {"q": 0, "ff": 0}
    handles = []
    for block in transformer.transformer_blocks:
        handles.append(block.attn.to_q.register_forward_hook(lambda *a: counts.__setitem__("q", counts["q"] + 1)))
        handles.append(block.ff.register_forward_hook(lambda *a: counts.__setitem__("ff", counts["ff"] + 1)))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", list(CASES))
def test_large_only_with_a_cache_equals_diffusers_pipeline_with_the_same_hook(tiny_pair, stitch_pipe, kind):
    large, _ = tiny_pair
    tf = large.transformer
    spec, apply = CASES[kind]
    now, handle = _clock(tf)
    try:
        apply(tf, now)
        with _count_work(tf) as diffusers_work, cache_context(tf, "large"):
            expected = large(**ARGS, generator=_gen()).images
    finally:
        handle.remove()
        _strip(tf)
    assert hooked_modules(tf) == []
    with _count_work(tf) as plain_work:
        plain = stitch_pipe(**ARGS, generator=_gen(), switch="large").images
    with _count_work(tf) as work:
        out = stitch_pipe(**ARGS, generator=_gen(), switch="large", cache=spec)
    assert (out.images - expected).abs().max() <= 1e-5
    assert work == diffusers_work
    # The cache really acted: less work than the uncached loop, and a different (approximate) result.
    assert work["q"] + work["ff"] < plain_work["q"] + plain_work["ff"]
    assert (out.images - plain).abs().max() > 1e-6
    assert hooked_modules(tf) == [] and not hasattr(tf, "_diffusers_hook")


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("role", ["large", "small"])
def test_hooks_are_gone_after_a_generation_and_after_an_error(tiny_pair, stitch_pipe, kind, role):
    large, small = tiny_pair
    model = large.transformer if role == "large" else small
    x = torch.randn(2, model.config.in_channels, 16, 16, generator=_gen(5))
    probe = dict(hidden_states=x, timestep=torch.tensor([700.0, 700.0]),
                 encoder_hidden_states=torch.randn(2, 8, model.config.joint_attention_dim, generator=_gen(6)),
                 pooled_projections=torch.randn(2, model.config.pooled_projection_dim, generator=_gen(7)))
    before = model(**probe).sample
    processors = dict(model.attn_processors)
    spec = {role: CASES[kind][0]}
    stitch_pipe(**ARGS, generator=_gen(), switch=HYBRID, cache=spec)
    assert hooked_modules(model) == []
    assert torch.equal(model(**probe).sample, before)

    def fail(info):
        if info["step"] == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        stitch_pipe(**ARGS, generator=_gen(), switch=HYBRID, cache=spec, callback=fail)
    assert hooked_modules(model) == [] and not hasattr(model, "_diffusers_hook")
    assert all(a is b for a, b in zip(model.attn_processors.values(), processors.values()))
    assert torch.equal(model(**probe).sample, before)


def test_masked_calls_bypass_the_large_models_hooks(stitch_pipe, tiny_pair):
    """A full-mask hybrid run reproduces the large model exactly; with a cache on the large model whose
    skips cannot start before the masked steps, the masked calls must neither reach the hooks nor change
    their state: the output is that same exact one."""
    large, _ = tiny_pair
    expected = large(**ARGS, generator=_gen(2)).images
    spec = {"kind": "magcache", "threshold": 0.5, "mag_ratios": RATIOS}  # skips from the 3rd call on
    out = stitch_pipe(**ARGS, generator=_gen(2), switch=HYBRID, mask="full", cache=spec)
    assert [r.stage for r in out.trace] == [0, 0] + [1] * (STEPS - 2)
    assert (out.images - expected).abs().max() <= 1e-5


def test_small_model_cache_in_a_hybrid_run_does_less_small_work(stitch_pipe, tiny_pair):
    _, small = tiny_pair
    with _count_work(small) as plain:
        stitch_pipe(**ARGS, generator=_gen(3), switch=HYBRID)
    with _count_work(small) as cached:
        stitch_pipe(**ARGS, generator=_gen(3), switch=HYBRID, cache={"small": CASES["magcache"][0]})
    assert cached["ff"] < plain["ff"]


def test_magcache_is_calibrated_on_first_use_like_diffusers_calibrate_mode(tiny_pair, stitch_pipe, capsys):
    large, _ = tiny_pair
    tf = large.transformer
    try:  # diffusers' own calibration: it prints the ratios once num_inference_steps calls have run
        apply_mag_cache(tf, MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
        capsys.readouterr()
        with cache_context(tf, "large"):
            large(**ARGS, generator=_gen(4))
        printed = capsys.readouterr().out
    finally:
        _strip(tf)
    diffusers_ratios = json.loads(printed.strip().splitlines()[-1])
    files = set(magcache_dir().glob("large-*.json")) if magcache_dir().exists() else set()
    first = stitch_pipe(**ARGS, generator=_gen(4), cache={"kind": "magcache", "threshold": 0.24})
    new = sorted(set(magcache_dir().glob("large-*.json")) - files)
    assert len(new) == 1
    stored = json.loads(new[0].read_text())["mag_ratios"]
    assert stored == pytest.approx(diffusers_ratios, rel=1e-6)
    mtime = new[0].stat().st_mtime_ns
    again = stitch_pipe(**ARGS, generator=_gen(4), cache={"kind": "magcache", "threshold": 0.24})
    assert new[0].stat().st_mtime_ns == mtime  # read from disk, not calibrated again
    assert torch.equal(first.images, again.images)
    explicit = stitch_pipe(**ARGS, generator=_gen(4), cache={"kind": "magcache", "threshold": 0.24,
                                                             "mag_ratios": stored})
    assert torch.equal(explicit.images, first.images)


def test_caches_are_plugins_under_diffusers_names(stitch_pipe):
    from stitchkit.commands.plugins import command

    assert {"magcache", "first-block", "taylorseer", "faster", "pab"} <= set(stitch_pipe.registry.names("cache"))
    listing = CliRunner().invoke(command).output
    assert "magcache: threshold=0.06, max_skip_steps=3" in listing
    assert "first-block: threshold=0.05" in listing


@pytest.mark.parametrize("cache, path", [({"kind": "nope"}, "cache.kind"), ({"middle": "pab"}, "cache.middle"),
                                         ({"small": {"kind": "pab", "speed": 2}}, "cache.small.speed")])
def test_bad_cache_specs_are_one_line_errors(stitch_pipe, cache, path):
    with pytest.raises(ConfigError) as err:
        stitch_pipe(**ARGS, cache=cache)
    assert str(err.value).startswith(path + ":")


def test_a_mixed_batch_keeps_one_hook_state_per_sample(stitch_pipe, tiny_pair, monkeypatch):
    """Samples in different stages call a cached model on different subsets of the batch: from the first
    such call on, each sample runs in its own cache context, also when the two are in one group again (the
    state follows the sample; tests/test_cache_clock.py checks its decisions against the sample alone)."""
    import stitchkit.loop.caches
    from stitchkit.protocols import Decision

    _, small = tiny_pair
    large_d, small_d = Decision(stage=0, large=True, small=False), Decision(stage=1, large=False, small=True)

    class Mixed:
        change_measure, batched = "x0", True

        def reset(self, num_steps):
            pass

        def decide(self, state):  # sample 1 moves to the small model two steps after sample 0
            return [small_d if state.step >= 2 else large_d, small_d if state.step >= 4 else large_d]

    contexts = []
    original = stitchkit.loop.caches.ModelCache.call

    def spy(self, fn, samples=None, **where):
        contexts.append(self.context_name(samples))
        return original(self, fn, samples, **where)

    monkeypatch.setattr(stitchkit.loop.caches.ModelCache, "call", spy)
    out = stitch_pipe(**ARGS, generator=_gen(8), switch=Mixed(), cache={"small": CASES["first-block"][0]})
    assert contexts == ["small:0", "small:0"] + ["small:0", "small:1"] * (STEPS - 4)
    assert torch.isfinite(out.images).all() and hooked_modules(small) == []


def test_cache_defaults_are_diffusers_and_magcache_presets_are_its_authors(stitch_pipe):
    """Peers at their published settings: every plain kind at diffusers' config defaults (read from
    diffusers here), MagCache's family presets at Zehong-Ma/MagCache's (FLUX: magcache_flux.py:466-468;
    Wan 2.1: magcache_generate.py:746-758)."""
    import dataclasses

    from diffusers.hooks import FasterCacheConfig, PyramidAttentionBroadcastConfig

    def made(spec):
        return stitch_pipe.registry.create("cache", spec)[0]

    def defaults(config_cls):
        return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}

    checks = {"magcache": MagCacheConfig, "first-block": FirstBlockCacheConfig, "taylorseer": TaylorSeerCacheConfig,
              "faster": FasterCacheConfig, "pab": PyramidAttentionBroadcastConfig}
    def same(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    for kind, config_cls in checks.items():
        ours, theirs = attrs.asdict(made(kind)), defaults(config_cls)
        differing = {k: (ours[k], theirs[k]) for k in ours
                     if k in theirs and k != "mag_ratios" and same(ours[k]) != same(theirs[k])}
        # PAB's config leaves the range None (no broadcast at all on SD3's joint attention): ours is 2, its
        # docstring example's and its own fallback's.
        assert differing == ({"spatial_attention_block_skip_range": (2, None)} if kind == "pab" else {}), kind
    flux, wan = made("magcache-flux"), made("magcache-wan2.1")
    assert (flux.threshold, flux.max_skip_steps, flux.retention_ratio) == (0.24, 5, 0.1)
    assert (wan.threshold, wan.max_skip_steps, wan.retention_ratio) == (0.12, 2, 0.2)
