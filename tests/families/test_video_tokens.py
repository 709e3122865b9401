"""Video tokens (frame, row, column): patchify/unpatchify against Wan's own unpatchify, the stitch and the
change map on 5-D latents, computed by hand."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.loop.change import change_map
from stitchkit.tokens import gather_tokens, patchify, stitch, token_grid, unpatchify

shapes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.sampled_from([(1, 2, 2), (2, 1, 2), (1, 1, 1)]),
                   st.integers(1, 3), st.integers(1, 3), st.integers(1, 4))


def wan_unpatchify(tokens, patch, f, h, w):
    """Verbatim from diffusers' WanTransformer3DModel.forward."""
    p_t, p_h, p_w = patch
    hidden_states = tokens.reshape(tokens.shape[0], f, h, w, p_t, p_h, p_w, -1)
    hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_unpatchify_is_wans_and_patchify_inverts_it(shape):
    b, c, patch, f, h, w = shape
    tokens = torch.randn(b, f * h * w, patch[0] * patch[1] * patch[2] * c)
    x = unpatchify(tokens, patch, f, h, w)
    assert torch.equal(x, wan_unpatchify(tokens, patch, f, h, w))
    assert torch.equal(patchify(x, patch), tokens)
    assert token_grid(x.shape[2:], patch) == (f, h, w)


def test_token_order_is_frame_row_column():
    x = torch.randn(2, 3, 4, 6, 8)  # (B, C, F, H, W), patch 1x2x2: grid 4 x 3 x 4
    tokens = patchify(x, (1, 2, 2))
    f, i, j = 2, 1, 3
    patch = x[:, :, f, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2]  # (B, C, 2, 2)
    assert torch.equal(tokens[:, (f * 3 + i) * 4 + j], patch.permute(0, 2, 3, 1).reshape(2, -1))


def test_stitch_and_change_map_on_video_latents():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(2, 4, 3, 4, 6, generator=g)
    indices = torch.stack([torch.randperm(18, generator=g)[:5] for _ in range(2)])
    large = torch.randn(2, 5, 16, generator=g)
    out = stitch(small, large, indices, (1, 2, 2))
    assert torch.equal(gather_tokens(out, indices, (1, 2, 2)), large)
    keep = torch.ones(2, 18, dtype=torch.bool)
    keep[torch.arange(2)[:, None], indices] = False
    assert torch.equal(patchify(out, (1, 2, 2))[keep], patchify(small, (1, 2, 2))[keep])

    delta = torch.randn(2, 4, 3, 4, 6, generator=g)
    cmap = change_map(delta, (1, 2, 2))
    assert cmap.shape == (2, 18)
    f, i, j = 1, 1, 2  # by hand: mean |delta| over channels and the token's 1x2x2 patch
    by_hand = delta[:, :, f, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].abs().mean(dim=(1, 2, 3))
    assert torch.allclose(cmap[:, (f * 2 + i) * 3 + j], by_hand, atol=1e-6)
