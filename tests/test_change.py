"""The change measures (Eq. 9-10, Algorithm 1 line 19, SRDiffusion's output distance) and the change map."""

from __future__ import annotations

import pytest
import torch

from stitchkit.loop.change import MEASURES, StepTensors, change_map, measure, measure_names, relative_l1
from stitchkit.errors import ConfigError


def steps(latents, next_latents, output, sigma):
    return StepTensors.from_step(
        torch.tensor(latents), torch.tensor(next_latents), torch.tensor(output), sigma
    )


# Two samples, one channel, 2x2 latents, patch size 1: every pixel is a token.
PREV = steps(
    latents=[[[[1.0, 2.0], [3.0, 4.0]]], [[[2.0, 2.0], [2.0, 2.0]]]],
    next_latents=[[[[1.0, 2.0], [3.0, 4.0]]], [[[2.0, 2.0], [2.0, 2.0]]]],
    output=[[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, -2.0], [2.0, -2.0]]]],
    sigma=1.0,
)  # x0 = latents - output: sample 0 [[0, 1], [2, 3]], sample 1 [[0, 4], [0, 4]]
CUR = steps(
    latents=[[[[1.0, 2.0], [3.0, 4.0]]], [[[2.0, 2.0], [2.0, 2.0]]]],
    next_latents=[[[[0.5, 2.0], [3.0, 3.0]]], [[[1.0, 1.0], [1.0, 1.0]]]],
    output=[[[[0.0, 2.0], [2.0, 2.0]]], [[[1.0, -1.0], [1.0, -1.0]]]],
    sigma=0.5,
)  # x0 = latents - 0.5 * output: sample 0 [[1, 1], [2, 3]], sample 1 [[1.5, 2.5], [1.5, 2.5]]


def test_step_tensors_from_step_computes_x0_of_eq_10():
    assert CUR.x0.tolist() == [[[[1.0, 1.0], [2.0, 3.0]]], [[[1.5, 2.5], [1.5, 2.5]]]]
    positional = StepTensors(CUR.latents, CUR.next_latents, CUR.output, CUR.x0)
    assert positional.x0 is CUR.x0


def test_x0_measure_against_hand_computed_values():
    change, cmap = measure("x0")(PREV, CUR, 1)
    # sample 0: |dx0| = [[1, 0], [0, 0]] -> mean 0.25; mean|x0_cur| = 7/4 -> 0.25 / 1.75 = 1/7
    # sample 1: |dx0| = [[1.5, 1.5], [1.5, 1.5]] -> 1.5; mean|x0_cur| = 2 -> 0.75
    assert change.dtype == torch.float32 and change.shape == (2,)
    assert change.tolist() == pytest.approx([1 / 7, 0.75])
    assert cmap.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.5, 1.5, 1.5, 1.5]]


def test_x0_prev_measure_divides_by_the_older_x0():
    change, cmap = measure("x0-prev")(PREV, CUR, 1)
    # FastVideo's SRDiffusion measure: same |dx0| as above, over mean|x0_prev|
    # sample 0: 0.25 / (6/4) = 1/6; sample 1: 1.5 / 2 = 0.75
    assert change.tolist() == pytest.approx([1 / 6, 0.75])
    assert cmap.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.5, 1.5, 1.5, 1.5]]
    assert measure("x0-prev")(None, CUR, 1) == (None, None)


def test_latent_measure_needs_no_previous_step():
    change, cmap = measure("latent")(None, CUR, 1)
    # sample 0: |next - latents| = [[0.5, 0, 0, 1]] -> 0.375; mean|next| = 8.5/4 = 2.125
    # sample 1: |Δ| = 1 everywhere; mean|next| = 1
    assert change.tolist() == pytest.approx([0.375 / 2.125, 1.0])
    assert cmap.tolist() == [[0.5, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    assert torch.equal(measure("latent")(PREV, CUR, 1)[0], change)


def test_output_measure_divides_by_the_previous_output():
    change, cmap = measure("output")(PREV, CUR, 1)
    # sample 0: |Δout| = [1, 1, 1, 1] -> 1; mean|out_prev| = 1 -> 1.0
    # sample 1: |Δout| = 1 everywhere; mean|out_prev| = 2 -> 0.5
    assert change.tolist() == pytest.approx([1.0, 0.5])
    assert cmap.tolist() == [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("name", ["x0", "output"])
def test_measures_of_consecutive_steps_wait_for_a_previous_step(name):
    assert measure(name)(None, CUR, 1) == (None, None)


def test_change_map_matches_an_explicit_loop_over_patches():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(2, 3, 4, 6, generator=gen)
    p = 2
    got = change_map(delta, p)
    assert got.shape == (2, (4 // p) * (6 // p))
    for b in range(2):
        for row in range(4 // p):
            for col in range(6 // p):
                patch = delta[b, :, row * p : (row + 1) * p, col * p : (col + 1) * p]
                token = row * (6 // p) + col  # row-major over the token grid
                assert got[b, token].item() == pytest.approx(patch.abs().mean().item(), rel=1e-6)


def test_change_map_token_order_is_sd3_patch_embedding_order():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    c, h, w, p = 3, 4, 6, 2
    embed = embeddings.PatchEmbed(
        height=h, width=w, patch_size=p, in_channels=c, embed_dim=1, pos_embed_type=None
    )
    with torch.no_grad():
        embed.proj.weight.fill_(1.0 / (c * p * p))
        embed.proj.bias.zero_()
        delta = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
        tokens = embed(delta.abs())  # (B, N, 1)
    torch.testing.assert_close(change_map(delta, p), tokens[..., 0])


def test_measures_are_per_sample_float32_whatever_the_input_dtype():
    half = StepTensors(*(t.to(torch.bfloat16) for t in (CUR.latents, CUR.next_latents, CUR.output, CUR.x0)))
    prev = StepTensors(
        *(t.to(torch.bfloat16) for t in (PREV.latents, PREV.next_latents, PREV.output, PREV.x0))
    )
    for name in measure_names():
        change, cmap = MEASURES[name](prev, half, 2)
        assert change.dtype == cmap.dtype == torch.float32
        assert change.shape == (2,) and cmap.shape == (2, 1)


def test_a_zero_reference_gives_a_finite_change():
    zero = torch.zeros(1, 1, 2, 2)
    assert relative_l1(zero, zero).tolist() == [0.0]
    big = relative_l1(torch.ones(1, 1, 2, 2), zero)
    assert torch.isfinite(big).all() and big.item() > 1e30


def test_change_map_refuses_latents_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match="not divisible by patch size 2"):
        change_map(torch.zeros(1, 1, 3, 4), 2)


def test_measure_names_and_unknown_measure():
    assert measure_names() == ("latent", "latent-std", "output", "small-output", "small-x0", "x0", "x0-prev")
    with pytest.raises(ConfigError) as err:
        measure("noise")
    assert str(err.value) == "change: unknown change measure 'noise'; known: latent, latent-std, output, small-output, small-x0, x0, x0-prev"
    with pytest.raises(ConfigError, match=r"^switch\.change: unknown change measure \[1\]"):
        measure([1], "switch.change")


def test_small_output_measure_compares_the_small_models_own_outputs_else_the_steps():
    """|S_t - S_{t-1}| / |S_{t-1}| by hand where both steps carry the small model's output; a step without
    one (small alone: its output is the small model's) falls back to the step's output."""
    x = torch.zeros(1, 1, 2, 2)
    old, new = torch.full_like(x, 2.0), torch.tensor([[[[2.0, 3.0], [1.0, 2.0]]]])
    prev = StepTensors.from_step(x, x, torch.full_like(x, 9.0), sigma=1.0, small_output=old)
    cur = StepTensors.from_step(x, x, torch.full_like(x, -9.0), sigma=1.0, small_output=new)
    change, change_map = measure("small-output")(prev, cur, 1)
    assert change.tolist() == [pytest.approx((0 + 1 + 1 + 0) / 4 / 2.0)]
    assert change_map.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    plain = StepTensors.from_step(x, x, old, sigma=1.0)  # no small_output: the step's own output
    assert measure("small-output")(plain, cur, 1)[0].tolist() == change.tolist()
    assert measure("small-output")(None, cur, 1) == (None, None)


def test_small_x0_measure_maps_the_small_models_own_change_and_keeps_x0s_d_t():
    """D_t is x0's (thresholds keep their meaning); the map compares the small model's own x0 predictions,
    against the large step's x0 after a large step, and is x0's outside hybrid steps."""
    from stitchkit.loop.change import MEASURES, StepTensors

    x = torch.zeros(1, 1, 2, 4)  # two tokens of patch 2
    large_step = StepTensors.from_step(x, x, -torch.ones_like(x), sigma=1.0)  # x0 = 1 everywhere
    small_out = torch.tensor([[[[-1.0, -1.0, -3.0, -3.0], [-1.0, -1.0, -3.0, -3.0]]]])  # small x0: 1 | 3
    stitched = small_out.clone()
    stitched[..., 2:] = -1.0  # the large model recomputed the second token: x0 back to 1 there
    hybrid = StepTensors.from_step(x, x, stitched, sigma=1.0, small_output=small_out)
    change, change_map = MEASURES["small-x0"](large_step, hybrid, 2)
    x0_change, x0_map = MEASURES["x0"](large_step, hybrid, 2)
    assert torch.equal(change, x0_change)
    assert x0_map.tolist() == [[0.0, 0.0]]  # the stitched x0 did not move at all...
    assert change_map.tolist() == [[0.0, 2.0]]  # ...but the small model disagrees with the large on token 2
    later = StepTensors.from_step(x, x, stitched, sigma=1.0, small_output=small_out * 0.5)  # small x0: .5 | 1.5
    assert MEASURES["small-x0"](hybrid, later, 2)[1].tolist() == [[0.5, 1.5]]
    small_step = StepTensors.from_step(x, x, small_out, sigma=1.0)  # no small_output: a plain step
    assert torch.equal(MEASURES["small-x0"](later, small_step, 2)[1], MEASURES["x0"](later, small_step, 2)[1])


def test_latent_std_is_ras_ranking_by_hand():
    """RAS's metric: std over channels of the latent step, averaged over each 2x2 patch (row-major tokens)."""
    from stitchkit.loop.change import MEASURES, StepTensors

    g = torch.Generator().manual_seed(0)
    latents, nxt = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    cur = StepTensors.from_step(latents, nxt, torch.zeros_like(latents), 0.5)
    _, cmap = MEASURES["latent-std"](None, cur, 2)
    d = nxt - latents
    expected = [sum(float(d[0, :, 2 * r + i, 2 * c + j].std()) for i in (0, 1) for j in (0, 1)) / 4
                for r in (0, 1) for c in (0, 1)]
    assert cmap[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_latent_std_ranks_the_schedulers_own_step_as_ras_does_in_bf16():
    """microsoft/RAS ranks ``std((sigma_next - sigma) * model_output)`` in the model's dtype, not the rounded
    ``next - latents``: on bf16 data the two pick different tokens, and stitchkit's map is RAS's."""
    import torch.nn.functional as F

    from stitchkit.loop.change import MEASURES, StepTensors

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 32, 32, generator=g).to(torch.bfloat16)
    output = torch.randn(1, 16, 32, 32, generator=g).to(torch.bfloat16)
    sigmas = torch.tensor([0.52, 0.47], dtype=torch.float32)  # the scheduler keeps float32 sigmas
    diff = (sigmas[1] - sigmas[0]) * output  # RAS's line, in bf16
    nxt = (latents.float() + diff.float()).to(torch.bfloat16)  # diffusers' Euler step: upcast, add, cast back
    cur = StepTensors.from_step(latents, nxt, output, 0.52, sigma_step=sigmas[1] - sigmas[0])
    _, cmap = MEASURES["latent-std"](None, cur, 2)
    ras = F.avg_pool2d(diff.std(dim=1, keepdim=True).float(), 2).flatten(1)
    assert torch.equal(cmap, ras)
    rounded = F.avg_pool2d((nxt.float() - latents.float()).std(dim=1, keepdim=True), 2).flatten(1)
    top = cmap.shape[1] // 2
    ours, theirs = set(cmap[0].topk(top).indices.tolist()), set(rounded[0].topk(top).indices.tolist())
    assert len(ours & theirs) < top  # the rounded step ranks other tokens on top
