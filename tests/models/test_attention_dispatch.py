"""The masked runners attend through diffusers' attention dispatch: a backend set on the model with
``set_attention_backend`` runs the hybrid (masked) steps too, for every family.

diffusers' registry keys backends by its ``AttentionBackendName`` enum and ``set_attention_backend`` accepts
only those names, so a custom backend cannot get a new name: the test registers a counting backend under
an existing name (``_native_math``) with ``_AttentionBackendRegistry.register``, sets it on the models,
and restores the registry's entry and active backend afterwards.
"""

import contextlib

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

CUSTOM = AttentionBackendName._NATIVE_MATH


@contextlib.contextmanager
def counting_backend():
    """Register a backend that counts its calls and computes native attention; undo it on exit."""
    registry = _AttentionBackendRegistry
    saved = (registry._backends.get(CUSTOM), registry._constraints.get(CUSTOM),
             registry._supported_arg_names.get(CUSTOM), registry._active_backend)
    calls = []

    def counted(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, _parallel_config=None):
        calls.append((tuple(query.shape), tuple(key.shape)))
        return registry._backends[AttentionBackendName.NATIVE](query=query, key=key, value=value,
                                                                attn_mask=attn_mask, scale=scale)

    registry.register(CUSTOM)(counted)
    try:
        yield calls
    finally:
        registry._backends[CUSTOM], registry._constraints[CUSTOM], registry._supported_arg_names[CUSTOM] = saved[:3]
        registry._active_backend = saved[3]


def _sd3():
    from stitchkit.families.sd3.masked import MaskedTransformer
    from stitchkit.families.sd3.tiny_random import tiny_transformer
    from stitchkit.protocols import ModelInputs

    model = tiny_transformer(num_layers=2, heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    inputs = ModelInputs(hidden_states=torch.randn(2, 16, 8, 8, generator=g), timestep=torch.tensor([500.0, 300.0]),
                         encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                         pooled_projections=torch.randn(2, 32, generator=g))
    return model, MaskedTransformer(model), inputs, 16, 2  # N, attention modules


def _wan():
    from stitchkit.families.wan.masked import WanMaskedTransformer
    from stitchkit.families.wan.tiny_random import tiny_transformer
    from stitchkit.protocols import ModelInputs

    model = tiny_transformer(num_layers=2, heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    inputs = ModelInputs(hidden_states=torch.randn(2, 16, 2, 8, 8, generator=g), timestep=torch.tensor([500, 300]),
                         encoder_hidden_states=torch.randn(2, 5, 32, generator=g))
    return model, WanMaskedTransformer(model), inputs, 32, 2  # self-attention only; cross-attention is stock


def _flux():
    from stitchkit.families.flux.masked import FluxMaskedTransformer
    from stitchkit.families.flux.tiny_random import tiny_transformer
    from stitchkit.protocols import ModelInputs

    model = tiny_transformer(num_layers=1, num_single_layers=1, heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    inputs = ModelInputs(hidden_states=torch.randn(2, 16, 8, 8, generator=g), timestep=torch.tensor([500.0, 300.0]),
                         encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                         pooled_projections=torch.randn(2, 32, generator=g), guidance=torch.full((2,), 3.5))
    return model, FluxMaskedTransformer(model), inputs, 16, 2


@pytest.mark.parametrize("family", [_sd3, _wan, _flux], ids=["sd3", "wan", "flux"])
def test_a_backend_set_on_the_model_runs_the_masked_steps(family):
    model, runner, inputs, n, modules = family()
    m = 5
    indices = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(b))[:m] for b in range(2)])
    with runner:  # the default backend first: the reference
        runner.forward(inputs, record=True)
        want = runner.forward_masked(inputs, indices)
    with counting_backend() as calls:
        model.set_attention_backend(CUSTOM.value)
        try:
            with runner:
                runner.forward(inputs, record=True)
                calls.clear()
                got = runner.forward_masked(inputs, indices)
        finally:
            model.reset_attention_backend()
    # One call per K/V-cache attention module, each with m selected queries (plus the 5 text tokens', for
    # joint attention) against the whole cache; Wan's cross-attention (stock processor) attends to the text.
    cached = [(query, key) for query, key in calls if key[1] in (n, n + 5)]
    assert len(cached) == modules
    assert all(query[1] in (m, m + 5) for query, _ in cached)
    assert all(key[1] == 5 for _, key in calls if (_, key) not in cached)
    assert torch.equal(got, want)  # the counting backend computes native attention
