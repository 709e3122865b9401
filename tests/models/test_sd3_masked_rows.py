"""MaskedTransformer's row subsets (``rows=``): a per-row K/V cache that calls on a subset of the batch
read and write, as the engine needs when the samples of a batch are in different stages.

The reference is always independent of the subset plumbing: diffusers' stock forward of each row, or the
whole-batch call without ``rows``. Float32 on CPU; "equal" means max |diff| <= 1e-5 (a call on fewer rows
runs other matmul shapes, so bitwise equality is not expected).
"""

import pytest
import torch

from stitchkit.families.sd3.masked import MaskedTransformer
from stitchkit.tokens import gather_tokens
from stitchkit.protocols import ModelInputs

from test_sd3_masked import N, TOL, VARIANTS, max_diff, stock, tiny_sd3

R, C, T, LATENT = 4, 4, 5, (12, 16)


def make_rows(seed: int) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(
        hidden_states=torch.randn(R, C, *LATENT, generator=g),
        timestep=torch.tensor([700.0, 250.0, 500.0, 100.0]),
        encoder_hidden_states=torch.randn(R, T, 12, generator=g),
        pooled_projections=torch.randn(R, 8, generator=g),
    )


def take(inputs: ModelInputs, rows: torch.Tensor) -> ModelInputs:
    return ModelInputs(hidden_states=inputs.hidden_states[rows], timestep=inputs.timestep[rows],
                       encoder_hidden_states=inputs.encoder_hidden_states[rows],
                       pooled_projections=inputs.pooled_projections[rows])


def indices_for(seed: int, rows: int, m: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:m].sort().values for _ in range(rows)])


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def model(request):
    return tiny_sd3(**VARIANTS[request.param])


def test_recording_in_subsets_then_masking_a_subset_reproduces_the_stock_forward(model):
    x = make_rows(1)
    full = stock(model, x)
    with MaskedTransformer(model) as large:
        # Rows recorded by two calls, in an order that is not the cache's.
        for rows in (torch.tensor([2, 0]), torch.tensor([3, 1])):
            out = large.forward(take(x, rows), record=True, rows=rows, cache_rows=R)
            assert max_diff(out, full[rows]) <= TOL
        rows = torch.tensor([3, 0, 2])
        idx = indices_for(7, 3, 11)
        got = large.forward_masked(take(x, rows), idx, rows=rows)
        assert max_diff(got, gather_tokens(full[rows], idx, 2)) <= TOL
        # The whole cache, read without rows, is the same per-row cache.
        idx4 = indices_for(8, R, 9)
        assert max_diff(large.forward_masked(x, idx4), gather_tokens(full, idx4, 2)) <= TOL


def test_a_subset_reads_its_own_rows_and_leaves_the_others_alone(model):
    x, other = make_rows(1), make_rows(2)
    with MaskedTransformer(model) as large:
        large.forward(other, record=True, rows=torch.arange(R), cache_rows=R)  # every row: a stale context
        rows = torch.tensor([1, 3])
        large.forward(take(x, rows), record=True, rows=rows, cache_rows=R)  # rows 1 and 3: fresh
        before = [(p.key.clone(), p.value.clone()) for p in large._processors]
        idx = indices_for(9, 2, 12)
        got = large.forward_masked(take(x, rows), idx, rows=rows)
        assert max_diff(got, gather_tokens(stock(model, take(x, rows)), idx, 2)) <= TOL
        # Rows 0 and 2 were neither read into the result (it matches the fresh context) nor written.
        for (key, value), p in zip(before, large._processors):
            for old, new in ((key, p.key), (value, p.value)):
                assert torch.equal(old[[0, 2], :N], new[[0, 2], :N])
        # Control: rows 0 and 2 hold the stale context, which does change masked tokens.
        stale = large.forward_masked(take(x, torch.tensor([0, 2])), idx, rows=torch.tensor([0, 2]))
        assert max_diff(stale, gather_tokens(stock(model, take(x, torch.tensor([0, 2]))), idx, 2)) > 1e-3


def test_rows_are_checked(model):
    x = make_rows(1)
    with MaskedTransformer(model) as large:
        with pytest.raises(ValueError, match="cache_rows"):
            large.forward(take(x, torch.tensor([0, 1])), record=True, rows=torch.tensor([0, 1]))
        for bad in (torch.tensor([0, 0]), torch.tensor([0, R]), torch.tensor([0, 1], dtype=torch.int32),
                    torch.tensor([0])):
            with pytest.raises(ValueError, match="rows"):
                large.forward(take(x, torch.tensor([0, 1])), record=True, rows=bad, cache_rows=R)
        large.forward(x, record=True)
        with pytest.raises(ValueError, match="rows"):
            large.forward_masked(take(x, torch.tensor([0, 1])), indices_for(1, 2, 3), rows=torch.tensor([1, R]))


def test_masking_rows_that_were_never_recorded_is_refused(model):
    x = make_rows(1)
    with MaskedTransformer(model) as large:
        large.forward(take(x, torch.tensor([0, 1])), record=True, rows=torch.tensor([0, 1]), cache_rows=R)
        large.forward_masked(take(x, torch.tensor([1])), indices_for(2, 1, 4), rows=torch.tensor([1]))
        with pytest.raises(RuntimeError, match="recorded"):
            large.forward_masked(take(x, torch.tensor([1, 2])), indices_for(2, 2, 4), rows=torch.tensor([1, 2]))
