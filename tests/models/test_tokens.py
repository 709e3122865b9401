"""patchify / unpatchify / stitch: SD3's token order, exact round trips."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.tokens import gather_tokens, patchify, stitch, unpatchify

shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 5),  # C
    st.sampled_from([1, 2, 4]),  # p
    st.integers(1, 5),  # h
    st.integers(1, 5),  # w
)


def sd3_unpatchify(tokens, p, h, w, c):
    """Verbatim from diffusers' SD3Transformer2DModel.forward."""
    hidden_states = tokens.reshape(shape=(tokens.shape[0], h, w, p, p, c))
    hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
    return hidden_states.reshape(shape=(hidden_states.shape[0], c, h * p, w * p))


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_unpatchify_is_sd3s_and_patchify_inverts_it(shape):
    b, c, p, h, w = shape
    tokens = torch.randn(b, h * w, p * p * c)
    x = unpatchify(tokens, p, h, w)
    assert torch.equal(x, sd3_unpatchify(tokens, p, h, w, c))
    assert torch.equal(patchify(x, p), tokens)
    assert torch.equal(unpatchify(patchify(x, p), p, h, w), x)


def test_token_order_is_row_major_patches():
    b, c, p, h, w = 2, 3, 2, 3, 4
    x = torch.randn(b, c, h * p, w * p)
    tokens = patchify(x, p)
    i, j = 2, 1
    patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, C, p, p)
    assert torch.equal(tokens[:, i * w + j], patch.permute(0, 2, 3, 1).reshape(b, -1))


@settings(max_examples=40, deadline=None)
@given(shapes, st.data())
def test_stitch_replaces_exactly_the_indexed_tokens(shape, data):
    b, c, p, h, w = shape
    n = h * w
    m = data.draw(st.integers(1, n))
    indices = torch.stack([torch.randperm(n)[:m] for _ in range(b)])
    small = torch.randn(b, c, h * p, w * p)
    large = torch.randn(b, m, p * p * c)
    before = small.clone()

    out = stitch(small, large, indices, p)

    assert torch.equal(small, before), "stitch must not write into its input"
    assert torch.equal(gather_tokens(out, indices, p), large)
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[torch.arange(b)[:, None], indices] = False
    assert torch.equal(patchify(out, p)[keep], patchify(small, p)[keep])
    # Round trip: stitching a prediction's own tokens gives it back bit for bit.
    assert torch.equal(stitch(small, gather_tokens(small, indices, p), indices, p), small)


def test_stitch_keeps_a_view_input_intact():
    # p == 1 and C == 1: patchify can be a view of its input.
    small = torch.randn(1, 1, 2, 3)
    before = small.clone()
    stitch(small, torch.zeros(1, 2, 1), torch.tensor([[0, 4]]), 1)
    assert torch.equal(small, before)


def test_stitch_rejects_mismatched_shapes_and_dtypes():
    small = torch.randn(2, 4, 8, 8)
    idx = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="do not match"):
        stitch(small, torch.randn(2, 3, 16), idx, 2)
    with pytest.raises(ValueError, match="do not match"):
        stitch(small, torch.randn(2, 2, 16), idx[:1], 2)
    with pytest.raises(ValueError, match="bfloat16"):
        stitch(small, torch.randn(2, 2, 16, dtype=torch.bfloat16), idx, 2)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 4, 7, 8), 2)
