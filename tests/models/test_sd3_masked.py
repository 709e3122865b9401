"""MaskedTransformer against diffusers' own SD3Transformer2DModel forward, on tiny random models.

Three variants: SD3 Medium-like (no qk-norm), SD3.5 Large-like (``qk_norm="rms_norm"``) and SD3.5
Medium-like (rms qk-norm and dual-attention blocks). Float32 on CPU; "equal" means max |diff| <= 1e-5.
"""

import pytest
import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.families.sd3.masked import MaskedTransformer
from stitchkit.tokens import gather_tokens, patchify
from stitchkit.protocols import ModelInputs

TOL = 1e-5
B, C, T = 2, 4, 5
LATENT = (12, 16)  # a 6 x 8 grid of 2 x 2 patches: N = 48, not square on purpose
N = 48
VARIANTS = {
    "sd3": {},
    "qk-rms": {"qk_norm": "rms_norm"},
    "dual-attention": {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1)},
}


def tiny_sd3(seed: int = 0, **overrides) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    config = dict(sample_size=8, patch_size=2, in_channels=C, out_channels=C, num_layers=3, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=8,
                  pos_embed_max_size=16)
    model = SD3Transformer2DModel(**{**config, **overrides}).eval()
    with torch.no_grad():  # sharper attention than the default init, so a wrong context shows
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(2.0)
    return model


def make_inputs(seed: int) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(
        hidden_states=torch.randn(B, C, *LATENT, generator=g),
        timestep=torch.tensor([700.0, 250.0]),
        encoder_hidden_states=torch.randn(B, T, 12, generator=g),
        pooled_projections=torch.randn(B, 8, generator=g),
    )


def stock(model, inputs: ModelInputs) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=inputs.hidden_states, encoder_hidden_states=inputs.encoder_hidden_states,
                     pooled_projections=inputs.pooled_projections, timestep=inputs.timestep, return_dict=False)[0]


def random_indices(g: torch.Generator, m: int) -> torch.Tensor:
    return torch.stack([torch.randperm(N, generator=g)[:m].sort().values for _ in range(B)])


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def model(request):
    return tiny_sd3(**VARIANTS[request.param])


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(1)


def test_full_forward_is_the_stock_forward(model, inputs):
    ref = stock(model, inputs)
    with MaskedTransformer(model) as large:
        assert max_diff(large.forward(inputs, record=True), ref) <= TOL
        assert max_diff(large.forward(inputs, record=False), ref) <= TOL
        # Calling the model itself while the processors are installed gives the stock result too.
        assert max_diff(stock(model, inputs), ref) <= TOL


def test_masked_forward_over_all_tokens_is_the_stock_forward(model, inputs):
    full = stock(model, inputs)
    ref = patchify(full, 2)
    with MaskedTransformer(model) as large:
        large.forward(make_inputs(2), record=True)  # a cache from another input: every row gets overwritten
        every = torch.arange(N).expand(B, N)
        assert max_diff(large.forward_masked(inputs, every), ref) <= TOL
        shuffled = torch.stack([torch.randperm(N) for _ in range(B)])  # order follows the indices
        assert max_diff(large.forward_masked(inputs, shuffled), gather_tokens(full, shuffled, 2)) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=12, deadline=None)
@given(ratio=st.floats(0.1, 0.4), seed=st.integers(0, 2**16))
def test_masked_forward_with_a_cache_of_the_same_input_reproduces_the_stock_forward(variant, ratio, seed):
    model, inputs = _cached_model(variant), make_inputs(1)
    m = max(1, round(ratio * N))
    indices = random_indices(torch.Generator().manual_seed(seed), m)
    ref = gather_tokens(stock(model, inputs), indices, 2)
    with MaskedTransformer(model) as large:
        large.forward(inputs, record=True)
        assert max_diff(large.forward_masked(inputs, indices), ref) <= TOL


_MODELS: dict = {}


def _cached_model(variant: str) -> SD3Transformer2DModel:
    # hypothesis re-runs the test body many times; build each variant once.
    if variant not in _MODELS:
        _MODELS[variant] = tiny_sd3(**VARIANTS[variant])
    return _MODELS[variant]


def test_a_stale_cache_changes_the_masked_tokens(model, inputs):
    """The control for the test above: the context matters, so that test can fail."""
    indices = random_indices(torch.Generator().manual_seed(3), 12)
    ref = gather_tokens(stock(model, inputs), indices, 2)
    with MaskedTransformer(model) as large:
        large.forward(make_inputs(2), record=True)
        assert max_diff(large.forward_masked(inputs, indices), ref) > 1e-3


def test_masked_forward_refreshes_the_cache_at_the_masked_tokens(model):
    """Algorithm 1, line 10: ``prev_KV`` is updated by the masked step (the first layer's image K/V depend
    on each token alone, so there the refreshed rows must be exactly a fresh recording's)."""
    x1, x2 = make_inputs(1), make_inputs(2)
    indices = random_indices(torch.Generator().manual_seed(4), 10)
    with MaskedTransformer(model) as large:
        first = large._processors[0]
        large.forward(x2, record=True)
        fresh = first.key[:, :N].clone(), first.value[:, :N].clone()
        large.forward(x1, record=True)
        old = first.key[:, :N].clone()
        large.forward_masked(x2, indices)
        rows = torch.arange(B)[:, None], indices
        for cached, want in zip((first.key, first.value), fresh):
            assert max_diff(cached[:, :N][rows], want[rows]) <= TOL
        untouched = torch.ones(B, N, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(first.key[:, :N][untouched], old[untouched])


def test_the_stock_model_is_untouched_after_a_generation(model, inputs):
    before = stock(model, inputs)
    processors = model.attn_processors
    large = MaskedTransformer(model)
    large.begin()
    assert all(model.attn_processors[name] is not p for name, p in processors.items())
    large.forward(inputs, record=True)
    large.forward_masked(make_inputs(2), random_indices(torch.Generator().manual_seed(5), 7))
    large.end()
    after = model.attn_processors
    assert after.keys() == processors.keys()
    assert all(after[name] is p for name, p in processors.items())
    assert torch.equal(stock(model, inputs), before)
    assert large.cache_nbytes == 0 and not large.has_cache


def test_cache_size_follows_the_documented_formula(model, inputs):
    cfg = model.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    rows = cfg.num_layers * (N + T) + len(cfg.dual_attention_layers) * N
    with MaskedTransformer(model) as large:
        assert large.cache_nbytes == 0
        large.forward(inputs, record=True)
        assert large.cache_nbytes == 2 * B * d * rows * 4
        large.free_cache()
        assert large.cache_nbytes == 0
        with pytest.raises(RuntimeError, match="record=True"):
            large.forward_masked(inputs, random_indices(torch.Generator(), 3))


def test_a_cache_recorded_under_inference_mode_can_be_refreshed_outside_it(model, inputs):
    indices = random_indices(torch.Generator().manual_seed(6), 9)
    ref = gather_tokens(stock(model, inputs), indices, 2)
    with MaskedTransformer(model) as large:
        with torch.inference_mode():
            large.forward(inputs, record=True)
        assert max_diff(large.forward_masked(inputs, indices), ref) <= TOL


def test_misuse_raises_clear_errors(model, inputs):
    large = MaskedTransformer(model)
    with pytest.raises(RuntimeError, match="begin"):
        large.forward(inputs, record=True)
    with pytest.raises(RuntimeError, match="begin"):
        large.forward_masked(inputs, torch.zeros(B, 1, dtype=torch.long))
    with large:
        with pytest.raises(RuntimeError, match="twice"):
            large.begin()
        with pytest.raises(RuntimeError, match="record=True"):
            large.forward_masked(inputs, torch.zeros(B, 1, dtype=torch.long))
        large.forward(inputs, record=True)
        bad = {
            "duplicate": torch.tensor([[1, 1], [2, 3]]),
            "out of range": torch.tensor([[1, N], [2, 3]]),
            "negative": torch.tensor([[-1, 0], [2, 3]]),
            "batch": torch.tensor([[1, 2]]),
            "dtype": torch.tensor([[1, 2], [2, 3]], dtype=torch.int32),
        }
        for indices in bad.values():
            with pytest.raises(ValueError, match="indices"):
                large.forward_masked(inputs, indices)
        other_text = ModelInputs(hidden_states=inputs.hidden_states, timestep=inputs.timestep,
                                 encoder_hidden_states=inputs.encoder_hidden_states[:, :3],
                                 pooled_projections=inputs.pooled_projections)
        with pytest.raises(RuntimeError, match="does not fit"):
            large.forward_masked(other_text, torch.tensor([[1, 2], [2, 3]]))
    large.end()  # a second end() is a no-op
    with pytest.raises(TypeError):
        MaskedTransformer(torch.nn.Linear(2, 2))
