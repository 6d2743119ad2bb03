"""The sparse Sinkhorn (OTA's CPU solve over its support) against POT, the dense solver and itself batched."""

import numpy as np
import ot
import pytest
import torch

from otadet.assign._sparse import segment_logsumexp, solve_support, sparse_sinkhorn_potentials
from otadet.assign._transport import solve_kept
from otadet.assign.sinkhorn import sinkhorn_potentials


def _masked_problem(rng, m, n, density):
    """A cost with a random support that reaches every row and column, balanced marginals."""
    cost = rng.random((m, n)) * 5
    mask = rng.random((m, n)) < density
    mask[rng.integers(0, m, n), np.arange(n)] = True  # every column reachable
    mask[np.arange(m), rng.integers(0, n, m)] = True  # every row too
    supply = rng.random(m) + 0.1
    demand = rng.random(n) + 0.1
    demand *= supply.sum() / demand.sum()
    return cost, mask, supply, demand


def test_segment_logsumexp_equals_dense_logsumexp():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(500, generator=gen, dtype=torch.float64) * 30
    index = torch.randint(0, 40, (500,), generator=gen)
    index[index == 7] = 8  # group 7 is empty
    values[index == 3] = float("-inf")  # group 3 is all -inf
    out = segment_logsumexp(values, index, 41)
    for group in range(41):
        members = values[index == group]
        expected = torch.logsumexp(members, 0) if members.numel() and torch.isfinite(members).any() else torch.tensor(0.0)
        torch.testing.assert_close(out[group], expected.to(out.dtype), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m,n,eps,density", [(3, 40, 0.5, 0.3), (30, 400, 0.2, 0.05), (60, 1000, 1.0, 0.05)])
def test_sparse_plan_matches_pot(m, n, eps, density):
    """POT solves the dense problem with the entries off the support priced out (exp(-2000/eps) = 0)."""
    rng = np.random.default_rng(m + n)
    cost, mask, supply, demand = _masked_problem(rng, m, n, density)
    rows, cols = np.nonzero(mask)
    iters = 3000
    solution = sparse_sinkhorn_potentials(
        torch.from_numpy(-cost[rows, cols] / eps), torch.from_numpy(rows), torch.from_numpy(cols),
        torch.from_numpy(supply), torch.from_numpy(demand), iters, tol=1e-13,
    )  # fmt: skip
    ours = np.zeros((m, n))
    ours[rows, cols] = np.exp(-cost[rows, cols] / eps + solution.f.numpy()[rows] + solution.g.numpy()[cols])
    ref = ot.sinkhorn(supply, demand, np.where(mask, cost, 2000.0), eps, method="sinkhorn_log", numItermax=iters, stopThr=1e-14)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9 * supply.sum())
    np.testing.assert_allclose(ours.sum(1), supply, rtol=1e-9)


def test_sparse_potentials_equal_the_dense_masked_solve_iterate_by_iterate():
    """Same start, same updates: after 7 (and after 50) iterations the potentials agree, early stop included."""
    rng = np.random.default_rng(5)
    cost, mask, supply, demand = _masked_problem(rng, 12, 300, 0.1)
    rows, cols = np.nonzero(mask)
    for iters, tol in ((7, None), (50, None), (400, 1e-6)):
        dense = sinkhorn_potentials(
            torch.from_numpy(cost)[None], torch.from_numpy(supply)[None], torch.from_numpy(demand)[None],
            eps=0.1, iters=iters, mask=torch.from_numpy(mask)[None], tol=tol,
        )  # fmt: skip
        sparse = sparse_sinkhorn_potentials(
            torch.from_numpy(-cost[rows, cols] / 0.1), torch.from_numpy(rows), torch.from_numpy(cols),
            torch.from_numpy(supply), torch.from_numpy(demand), iters, tol,
        )  # fmt: skip
        assert sparse.iters == dense.iters
        torch.testing.assert_close(sparse.f, dense.f[0], rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(sparse.g, dense.g[0], rtol=1e-10, atol=1e-9)


def test_solve_support_equals_solve_kept_on_a_padded_batch():
    """OTA-shaped batch: gts with a few candidate columns each, background everywhere, padded
    columns, a padded gt row, dropped anchors (the virtual column), a gt row with an all-columns
    support (an orphan's). The dense solve prices the rest at 1e6, as OTA does."""
    gen = torch.Generator().manual_seed(2)
    B, M, K = 3, 6, 80
    cost = torch.rand(B, M, K, generator=gen, dtype=torch.float64) * 4
    support = torch.rand(B, M, K, generator=gen) < 0.08
    support[:, -1] = True  # the background row
    support[1, 2] = True  # an orphan: every column open
    kept = torch.ones(B, K, dtype=torch.bool)
    kept[2, 60:] = False  # padding columns
    support &= kept[:, None, :]
    supply = torch.tensor([[3.0, 2, 4, 1, 5, 0], [2, 2, 1, 3, 1, 0], [1, 3, 2, 0, 2, 0]], dtype=torch.float64)  # row 3 of image 2: padding
    support[2, 3] = False
    dropped = torch.tensor([20.0, 0.0, 7.0], dtype=torch.float64)
    supply[:, -1] = kept.sum(1) + dropped - supply.sum(1)
    dense_cost = torch.where(support | (torch.arange(M) == M - 1)[None, :, None], cost, 1e6)
    for rescale in (True, False):
        dense = solve_kept(dense_cost, supply, kept, dropped, 0.1, 50, None, rescale)
        sparse = solve_support(cost, support, supply, kept, dropped, 0.1, 50, None, rescale)
        assert torch.equal(sparse.choice, dense.choice)
        torch.testing.assert_close(sparse.f, dense.f, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(sparse.marginal_error, dense.marginal_error, rtol=1e-6, atol=1e-12)
        assert int(sparse.num_ambiguous) == int(dense.num_ambiguous) and sparse.iters == dense.iters
        assert (sparse.choice[2, 60:] == M - 1).all()
