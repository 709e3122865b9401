"""WanMaskedTransformer against diffusers' own WanTransformer3DModel forward, on tiny random models.

Two variants: separate Q/K/V projections and fused ones (``fuse_qkv_projections``). Float32 on CPU; "equal"
means max |diff| <= 1e-5. Tokens are (frame, row, column), the grid 3 x 4 x 6 (not square on purpose).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.families.wan import wan_forward
from stitchkit.families.wan.masked import WanMaskedTransformer
from stitchkit.families.wan.tiny_random import tiny_transformer
from stitchkit.tokens import gather_tokens, patchify
from stitchkit.protocols import ModelInputs

TOL = 1e-5
B, C, T, TEXT_DIM = 2, 16, 5, 32
LATENT = (3, 8, 12)  # frames, height, width: grid 3 x 4 x 6 of 1x2x2 patches
N = 72
PATCH = (1, 2, 2)
VARIANTS = ("separate-qkv", "fused-qkv")


def tiny_wan(seed: int = 0, fused: bool = False):
    model = tiny_transformer(num_layers=3, heads=2, seed=seed, ffn_dim=32)
    with torch.no_grad():  # sharper attention than the default init, so a wrong context shows
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(2.0)
    if fused:
        model.fuse_qkv_projections()
    return model


def make_inputs(seed: int, batch: int = B) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(
        hidden_states=torch.randn(batch, C, *LATENT, generator=g),
        timestep=torch.tensor([700, 250, 900, 40][:batch]),
        encoder_hidden_states=torch.randn(batch, T, TEXT_DIM, generator=g),
    )


def stock(model, inputs: ModelInputs) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=inputs.hidden_states, timestep=inputs.timestep,
                     encoder_hidden_states=inputs.encoder_hidden_states, return_dict=False)[0]


def random_indices(g: torch.Generator, m: int, batch: int = B) -> torch.Tensor:
    return torch.stack([torch.randperm(N, generator=g)[:m].sort().values for _ in range(batch)])


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=VARIANTS)
def model(request):
    return tiny_wan(fused=request.param == "fused-qkv")


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(1)


def test_full_forward_is_the_stock_forward(model, inputs):
    ref = stock(model, inputs)
    assert ref.shape == (B, C, *LATENT)
    with WanMaskedTransformer(model) as large:
        assert max_diff(large.forward(inputs, record=True), ref) <= TOL
        assert max_diff(large.forward(inputs, record=False), ref) <= TOL
        # Calling the model itself while the processors are installed gives the stock result too.
        assert max_diff(wan_forward(model, inputs), ref) <= TOL


def test_masked_forward_over_all_tokens_is_the_stock_forward(model, inputs):
    ref = patchify(stock(model, inputs), PATCH)
    with WanMaskedTransformer(model) as large:
        assert large.num_tokens(*LATENT) == N
        large.forward(inputs, record=True)
        every = torch.arange(N).expand(B, N).contiguous()
        assert max_diff(large.forward_masked(inputs, every), ref) <= TOL
        # A permuted order gives the same tokens in that order.
        perm = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(b)) for b in range(B)])
        want = torch.gather(ref, 1, perm[..., None].expand(-1, -1, ref.shape[-1]))
        assert max_diff(large.forward_masked(inputs, perm), want) <= TOL


_models = {v: tiny_wan(fused=v == "fused-qkv") for v in VARIANTS}  # hypothesis cannot take a fixture


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=12, deadline=None)
@given(ratio=st.floats(0.1, 0.4), seed=st.integers(0, 2**16))
def test_masked_forward_with_a_cache_of_the_same_input_reproduces_the_stock_forward(variant, ratio, seed):
    model = _models[variant]
    inputs = make_inputs(seed)
    ref = stock(model, inputs)
    g = torch.Generator().manual_seed(seed)
    m = max(1, round(ratio * N))
    indices = random_indices(g, m)  # a different subset per sample
    with WanMaskedTransformer(model) as large:
        large.forward(inputs, record=True)
        got = large.forward_masked(inputs, indices)
    assert got.shape == (B, m, 4 * C)
    assert max_diff(got, gather_tokens(ref, indices, PATCH)) <= TOL


def test_a_stale_cache_changes_the_masked_tokens(model, inputs):
    """The context matters: K/V recorded on other latents give other predictions (so the tests above can fail)."""
    other = make_inputs(7)
    indices = random_indices(torch.Generator().manual_seed(3), 20)
    with WanMaskedTransformer(model) as large:
        large.forward(other, record=True)
        stale = large.forward_masked(inputs, indices)
    assert max_diff(stale, gather_tokens(stock(model, inputs), indices, PATCH)) > 1e-3


def test_masked_forward_refreshes_the_cache_at_the_masked_tokens(model):
    a, b = make_inputs(2), make_inputs(3)
    indices = random_indices(torch.Generator().manual_seed(4), 25)
    with WanMaskedTransformer(model) as large:
        large.forward(b, record=True)
        keys_b = [p.key.clone() for p in large._processors]
        large.forward(a, record=True)
        keys_a = [p.key.clone() for p in large._processors]
        large.forward_masked(b, indices)
        rows = torch.arange(B)[:, None]
        for p, ka, kb in zip(large._processors, keys_a, keys_b):
            # The first block's K at the masked tokens depends on those tokens only: it is b's exactly.
            keep = torch.ones(B, N, dtype=torch.bool)
            keep[rows, indices] = False
            assert torch.equal(p.key[keep], ka[keep]), "tokens outside the mask must keep their recorded K/V"
        first = large._processors[0]
        assert max_diff(first.key[rows, indices], keys_b[0][rows, indices]) <= TOL


def test_cache_rows_follow_the_row_subset_api(model):
    """``rows``: batch row j of a call is cache row rows[j] (issue 10's API); the result is that of the
    whole-batch call for those rows."""
    inputs = make_inputs(5, batch=4)
    indices = random_indices(torch.Generator().manual_seed(6), 15, batch=4)
    ref = gather_tokens(stock(model, inputs), indices, PATCH)
    subset = torch.tensor([3, 1])

    def rows_of(x):
        return ModelInputs(hidden_states=x.hidden_states[subset], timestep=x.timestep[subset],
                           encoder_hidden_states=x.encoder_hidden_states[subset])

    with WanMaskedTransformer(model) as large:
        large.forward(inputs, record=True)  # all 4 rows
        got = large.forward_masked(rows_of(inputs), indices[subset], rows=subset)
        assert max_diff(got, ref[subset]) <= TOL
        # Recording only rows 0 and 2 into a 4-row cache leaves rows 1 and 3 as they were.
        before = large._processors[0].key.clone()
        other = make_inputs(8, batch=4)
        two = torch.tensor([0, 2])
        large.forward(ModelInputs(hidden_states=other.hidden_states[two], timestep=other.timestep[two],
                                  encoder_hidden_states=other.encoder_hidden_states[two]),
                      record=True, rows=two, cache_rows=4)
        after = large._processors[0].key
        assert torch.equal(after[subset], before[subset]) and not torch.equal(after[two], before[two])
        with pytest.raises(ValueError, match="rows must be below"):
            large.forward_masked(rows_of(inputs), indices[subset], rows=torch.tensor([4, 1]))


def test_the_stock_model_is_untouched_after_a_generation(model, inputs):
    processors = dict(model.attn_processors)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = stock(model, inputs)
    with WanMaskedTransformer(model) as large:
        large.forward(inputs, record=True)
        large.forward_masked(inputs, random_indices(torch.Generator().manual_seed(1), 30))
    assert all(model.attn_processors[k] is v for k, v in processors.items())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(stock(model, inputs), before)


def test_cache_size_follows_the_documented_formula(model, inputs):
    d = model.config.num_attention_heads * model.config.attention_head_dim
    with WanMaskedTransformer(model) as large:
        assert large.cache_nbytes == 0
        large.forward(inputs, record=True)
        assert large.cache_nbytes == 2 * model.config.num_layers * B * N * d * 4  # float32
        large.free_cache()
        assert large.cache_nbytes == 0 and not large.has_cache


def test_misuse_raises_clear_errors(model, inputs):
    large = WanMaskedTransformer(model)
    every = torch.arange(N).expand(B, N).contiguous()
    with pytest.raises(RuntimeError, match="begin"):
        large.forward(inputs, record=True)
    with large:
        with pytest.raises(RuntimeError, match="record"):
            large.forward_masked(inputs, every)
        large.forward(inputs, record=True)
        with pytest.raises(ValueError, match="distinct"):
            large.forward_masked(inputs, torch.zeros(B, 3, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"\[0, 72\)"):
            large.forward_masked(inputs, torch.full((B, 1), N))
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        WanMaskedTransformer(torch.nn.Linear(2, 2))
