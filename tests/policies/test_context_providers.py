"""The kv-cache and full-large context providers, on a tiny random SD3 transformer."""

import pluggy
import pytest
import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

from stitchkit import hookspecs
from stitchkit.families.sd3.masked import MaskedTransformer
from stitchkit.tokens import gather_tokens
from stitchkit.policies import full_large, kv_cache
from stitchkit.protocols import ContextProvider, ModelInputs

B, N = 2, 16  # an 8 x 8 latent in 2 x 2 patches


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                 caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8).eval()


def make_inputs(seed: int) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(hidden_states=torch.randn(B, 4, 8, 8, generator=g), timestep=torch.tensor([900.0, 400.0]),
                       encoder_hidden_states=torch.randn(B, 5, 12, generator=g),
                       pooled_projections=torch.randn(B, 8, generator=g))


def stock(model, inputs):
    with torch.no_grad():
        return model(hidden_states=inputs.hidden_states, encoder_hidden_states=inputs.encoder_hidden_states,
                     pooled_projections=inputs.pooled_projections, timestep=inputs.timestep, return_dict=False)[0]


INDICES = torch.tensor([[0, 3, 9, 15], [1, 2, 8, 12]])


def registered(module) -> dict:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(module)
    found = {}
    pm.hook.register_context_providers(register=lambda name, factory, **kw: found.setdefault(name, factory))
    return found


@pytest.mark.parametrize(("module", "name", "cls"), [(kv_cache, "kv-cache", kv_cache.KVCacheContext),
                                                      (full_large, "full-large", full_large.FullLargeContext)])
def test_registers_a_factory_without_required_parameters(module, name, cls):
    assert registered(module) == {name: cls}
    provider = cls()  # what the registry does with no parameters: factory(**{})
    assert isinstance(provider, ContextProvider)


def test_kv_cache_records_on_full_steps_and_masks_against_it(model):
    x = make_inputs(1)
    want = stock(model, x)
    provider = kv_cache.KVCacheContext()
    with MaskedTransformer(model) as large:
        provider.reset()
        assert torch.allclose(provider.full(large, x), want, atol=1e-5)
        assert large.cache_nbytes > 0
        assert torch.allclose(provider.masked(large, x, INDICES), gather_tokens(want, INDICES, 2), atol=1e-5)
        provider.release()
        assert large.cache_nbytes == 0, "release() frees the K/V cache"
        provider.release()  # twice is fine
        with pytest.raises(RuntimeError, match="record=True"):
            provider.masked(large, x, INDICES)  # nothing recorded in this generation


def test_kv_cache_reset_forgets_the_last_generation(model):
    provider = kv_cache.KVCacheContext()
    with MaskedTransformer(model) as large:
        provider.full(large, make_inputs(1))
        provider.reset()
        assert large.cache_nbytes == 0


def test_full_large_uses_the_fresh_full_prediction_and_records_nothing(model):
    x = make_inputs(2)
    want = stock(model, x)
    provider = full_large.FullLargeContext()
    with MaskedTransformer(model) as large:
        provider.reset()
        assert torch.allclose(provider.full(large, x), want, atol=1e-5)
        assert torch.allclose(provider.masked(large, x, INDICES), gather_tokens(want, INDICES, 2), atol=1e-5)
        assert large.cache_nbytes == 0
        provider.release()
