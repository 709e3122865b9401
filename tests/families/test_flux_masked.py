"""FluxMaskedTransformer against diffusers' own FluxTransformer2DModel forward, on tiny random models.

Two variants: separate Q/K/V projections and fused ones (``fuse_qkv_projections``). Float32 on CPU; "equal"
means max |diff| <= 1e-5. Latents 8 x 12 (a 4 x 6 grid of packed 2x2 tokens, not square on purpose);
the stock forward is called as FluxPipeline calls it (packed latents, ids, timestep / 1000, guidance).
"""

import pytest
import torch
from diffusers import FluxPipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.families.flux.latents import pack, to_stitch_layout, unpack
from stitchkit.families.flux.masked import FluxMaskedTransformer, flux_forward
from stitchkit.families.flux.tiny_random import tiny_transformer
from stitchkit.tokens import gather_tokens, patchify
from stitchkit.protocols import ModelInputs

TOL = 1e-5
B, C, T, TEXT_DIM, POOLED = 2, 16, 5, 32, 32
LATENT = (8, 12)
N = 24
VARIANTS = ("separate-qkv", "fused-qkv")


def tiny_flux(seed: int = 0, fused: bool = False):
    model = tiny_transformer(num_layers=2, num_single_layers=2, heads=2, seed=seed)
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
        timestep=torch.tensor([700.0, 250.0, 900.0, 40.0][:batch]),
        encoder_hidden_states=torch.randn(batch, T, TEXT_DIM, generator=g),
        pooled_projections=torch.randn(batch, POOLED, generator=g),
        guidance=torch.full((batch,), 3.5),
    )


def stock(model, inputs: ModelInputs) -> torch.Tensor:
    """diffusers' forward, with the arguments written out as in FluxPipeline.__call__ (not stitchkit's helper)."""
    x = inputs.hidden_states
    h, w = LATENT
    with torch.no_grad():
        out = model(hidden_states=FluxPipeline._pack_latents(x, x.shape[0], C, h, w),
                    timestep=inputs.timestep / 1000, guidance=inputs.guidance,
                    pooled_projections=inputs.pooled_projections, encoder_hidden_states=inputs.encoder_hidden_states,
                    txt_ids=torch.zeros(T, 3), img_ids=FluxPipeline._prepare_latent_image_ids(
                        x.shape[0], h // 2, w // 2, x.device, x.dtype), return_dict=False)[0]
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)  # sizes in pixels, VAE factor 8


def random_indices(g: torch.Generator, m: int, batch: int = B) -> torch.Tensor:
    return torch.stack([torch.randperm(N, generator=g)[:m].sort().values for _ in range(batch)])


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=VARIANTS)
def model(request):
    return tiny_flux(fused=request.param == "fused-qkv")


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(1)


def test_packing_round_trips_and_token_layouts_agree():
    x = torch.randn(2, C, *LATENT)
    assert torch.equal(unpack(pack(x), *LATENT), x)
    assert torch.equal(to_stitch_layout(pack(x)), patchify(x, 2))


def test_full_forward_is_the_stock_forward(model, inputs):
    ref = stock(model, inputs)
    assert ref.shape == (B, C, *LATENT)
    assert max_diff(flux_forward(model, inputs), ref) == 0.0
    with FluxMaskedTransformer(model) as large:
        assert max_diff(large.forward(inputs, record=True), ref) == 0.0
        assert max_diff(large.forward(inputs, record=False), ref) == 0.0
        # Calling the model itself while the processors are installed gives the stock result too.
        assert max_diff(flux_forward(model, inputs), ref) == 0.0


def test_masked_forward_over_all_tokens_is_the_stock_forward(model, inputs):
    ref = patchify(stock(model, inputs), 2)
    with FluxMaskedTransformer(model) as large:
        assert large.num_tokens(*LATENT) == N
        large.forward(inputs, record=True)
        every = torch.arange(N).expand(B, N).contiguous()
        assert max_diff(large.forward_masked(inputs, every), ref) <= TOL
        # A permuted order gives the same tokens in that order.
        perm = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(b)) for b in range(B)])
        want = torch.gather(ref, 1, perm[..., None].expand(-1, -1, ref.shape[-1]))
        assert max_diff(large.forward_masked(inputs, perm), want) <= TOL


_models = {v: tiny_flux(fused=v == "fused-qkv") for v in VARIANTS}  # hypothesis cannot take a fixture


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(ratio=st.floats(0.1, 0.5), seed=st.integers(0, 2**16))
def test_masked_forward_with_a_cache_of_the_same_input_reproduces_the_stock_forward(variant, ratio, seed):
    model = _models[variant]
    inputs = make_inputs(seed)
    ref = stock(model, inputs)
    m = max(1, round(ratio * N))
    indices = random_indices(torch.Generator().manual_seed(seed), m)  # a different subset per sample
    with FluxMaskedTransformer(model) as large:
        large.forward(inputs, record=True)
        got = large.forward_masked(inputs, indices)
    assert got.shape == (B, m, 4 * C)
    assert max_diff(got, gather_tokens(ref, indices, 2)) <= TOL


def test_a_stale_cache_changes_the_masked_tokens(model, inputs):
    """The context matters: K/V recorded on other latents give other predictions (so the tests above can fail)."""
    other = make_inputs(7)
    indices = random_indices(torch.Generator().manual_seed(3), 7)
    with FluxMaskedTransformer(model) as large:
        large.forward(other, record=True)
        stale = large.forward_masked(inputs, indices)
    assert max_diff(stale, gather_tokens(stock(model, inputs), indices, 2)) > 1e-3


def test_cache_rows_serve_a_subset_of_the_batch(model):
    """Per-sample cache rows (a batch whose samples are in different stages): rows recorded apart, read apart."""
    inputs = make_inputs(11, batch=4)
    ref = stock(model, inputs)
    indices = random_indices(torch.Generator().manual_seed(5), 6, batch=2)
    rows = torch.tensor([3, 1])
    sub = ModelInputs(**{k: getattr(inputs, k).index_select(0, rows) for k in
                         ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections", "guidance")})
    with FluxMaskedTransformer(model) as large:
        for part in (torch.tensor([0, 1]), torch.tensor([2, 3])):
            part_inputs = ModelInputs(**{k: getattr(inputs, k).index_select(0, part) for k in
                                         ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections",
                                          "guidance")})
            large.forward(part_inputs, record=True, rows=part, cache_rows=4)
        got = large.forward_masked(sub, indices, rows=rows)
    assert max_diff(got, gather_tokens(ref.index_select(0, rows), indices, 2)) <= TOL


def test_end_restores_the_processors_and_frees_the_cache(model, inputs):
    before = model.attn_processors
    large = FluxMaskedTransformer(model).begin()
    large.forward(inputs, record=True)
    assert large.cache_nbytes == 2 * 4 * B * (T + N) * model.inner_dim * 4  # 2 double + 2 single, float32
    large.end()
    assert not large.has_cache
    assert all(model.attn_processors[name] is proc for name, proc in before.items())


def test_a_cache_recorded_under_inference_mode_can_be_refreshed_outside_it(model, inputs):
    """The lock check runs before the blocks (release_locked), not in the traced processors."""
    indices = random_indices(torch.Generator().manual_seed(6), 9)
    ref = gather_tokens(stock(model, inputs), indices, 2)
    with FluxMaskedTransformer(model) as large:
        with torch.inference_mode():
            large.forward(inputs, record=True)
        assert max_diff(large.forward_masked(inputs, indices), ref) <= TOL
        large.forward(inputs, record=True)  # and recorded again outside it
        assert max_diff(large.forward_masked(inputs, indices), ref) <= TOL
