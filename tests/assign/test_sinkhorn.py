"""sinkhorn against POT (an independent optimal-transport library) and exact OT (ot.emd)."""

import numpy as np
import ot
import pytest
import torch

from otadet.assign import sinkhorn
from otadet.assign.sinkhorn import sinkhorn_potentials


def _problem(rng, m, n):
    cost = rng.random((m, n)) * 5
    supply = rng.random(m) + 0.1
    demand = rng.random(n) + 0.1
    demand *= supply.sum() / demand.sum()
    return cost, supply, demand


@pytest.mark.parametrize("m,n,eps", [(2, 10, 0.5), (5, 40, 0.2), (30, 300, 0.1), (100, 2000, 1.0), (2, 5000, 0.5), (200, 2000, 1.0)])
def test_plan_matches_pot(m, n, eps):
    rng = np.random.default_rng(m * 1000 + n)
    cost, supply, demand = _problem(rng, m, n)
    iters = 3000 if m * n < 50_000 else 300  # eps >= 0.5 converges in far fewer iterations
    ours = sinkhorn(
        torch.from_numpy(cost)[None], torch.from_numpy(supply)[None], torch.from_numpy(demand)[None], eps=eps, iters=iters, tol=1e-13
    )[0].numpy()
    ref = ot.sinkhorn(supply, demand, cost, eps, method="sinkhorn_log", numItermax=iters, stopThr=1e-14)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9 * supply.sum())
    np.testing.assert_allclose(ours.sum(1), supply, rtol=1e-9)


def test_small_eps_argmax_equals_exact_ot():
    # Integer supplies and unit demands: the LP solution is a hard assignment.
    rng = np.random.default_rng(0)
    m, n, batch = 4, 30, 20
    cost = rng.random((batch, m, n))
    supply = np.array([3.0, 5.0, 2.0, n - 10.0])
    plans = sinkhorn(
        torch.from_numpy(cost), torch.from_numpy(supply).expand(batch, m), torch.ones(batch, n, dtype=torch.float64), eps=0.002, iters=3000
    )
    agree = sum(int((plans[i].argmax(0).numpy() == ot.emd(supply, np.ones(n), cost[i]).argmax(0)).sum()) for i in range(batch))
    assert agree / (batch * n) >= 0.99


def test_batch_with_padding_equals_each_problem_alone():
    rng = np.random.default_rng(1)
    problems = [_problem(rng, m, n) for m, n in [(3, 20), (6, 35), (1, 12)]]
    M, N = 6, 35
    cost = torch.zeros(3, M, N, dtype=torch.float64)
    supply = torch.zeros(3, M, dtype=torch.float64)
    demand = torch.zeros(3, N, dtype=torch.float64)
    for i, (c, s, d) in enumerate(problems):
        cost[i, : c.shape[0], : c.shape[1]] = torch.from_numpy(c)
        supply[i, : len(s)] = torch.from_numpy(s)
        demand[i, : len(d)] = torch.from_numpy(d)
    plan = sinkhorn(cost, supply, demand, eps=0.1, iters=200)
    for i, (c, s, d) in enumerate(problems):
        alone = sinkhorn(torch.from_numpy(c)[None], torch.from_numpy(s)[None], torch.from_numpy(d)[None], eps=0.1, iters=200)[0]
        torch.testing.assert_close(plan[i, : c.shape[0], : c.shape[1]], alone, rtol=1e-10, atol=1e-12)
        assert plan[i, c.shape[0] :].abs().sum() == 0 and plan[i, :, c.shape[1] :].abs().sum() == 0


def test_mask_excludes_entries_and_huge_costs_stay_finite():
    cost = torch.tensor([[[1.0, 1e6, 2.0], [0.5, 0.5, 1e6]]])
    mask = torch.tensor([[[True, False, True], [True, True, True]]])
    supply, demand = torch.tensor([[1.0, 2.0]]), torch.ones(1, 3)
    for eps in (1.0, 0.1, 1e-3):
        plan = sinkhorn(cost, supply, demand, eps=eps, iters=100, mask=mask)
        assert torch.isfinite(plan).all()
        assert plan[0, 0, 1] == 0
        torch.testing.assert_close(plan.sum(2), supply)


def test_early_stop_reaches_tol_in_fewer_iterations():
    rng = np.random.default_rng(4)
    cost, supply, demand = _problem(rng, 20, 500)
    args = torch.from_numpy(cost)[None], torch.from_numpy(supply)[None], torch.from_numpy(demand)[None]
    for tol in (1e-2, 1e-6):
        out = sinkhorn_potentials(*args, eps=0.2, iters=5000, tol=tol)
        assert out.iters < 5000
        assert np.abs(out.plan()[0].sum(0).numpy() - demand).max() < tol
    assert sinkhorn_potentials(*args, eps=0.2, iters=5000, tol=1e-2).iters < sinkhorn_potentials(*args, eps=0.2, iters=5000, tol=1e-6).iters
    assert sinkhorn_potentials(*args, eps=0.2, iters=37).iters == 37  # tol=None runs every iteration


def test_degenerate_shapes_and_padding_stay_finite():
    gen = torch.Generator().manual_seed(0)
    # One supplier: it must ship everything, so the plan is the demand itself.
    demand = torch.rand(1, 7, generator=gen) + 0.1
    plan = sinkhorn(torch.rand(1, 1, 7, generator=gen), demand.sum(1, keepdim=True), demand, eps=0.01, iters=3)
    torch.testing.assert_close(plan[:, 0], demand)
    # One demander.
    plan = sinkhorn(torch.tensor([[[1.0], [2.0], [0.5]]]), torch.tensor([[0.2, 0.3, 0.5]]), torch.ones(1, 1))
    torch.testing.assert_close(plan[0, :, 0], torch.tensor([0.2, 0.3, 0.5]))
    # A batch with fully padded rows, fully padded columns, a fully masked real row, an empty problem,
    # costs up to 1e6 and eps down to 1e-3.
    B, M, N = 4, 6, 50
    cost = torch.rand(B, M, N, generator=gen) * 10
    cost[0, :, :10] = 1e6
    cost[1] = torch.where(torch.rand(M, N, generator=gen) < 0.5, 1e6, cost[1])
    supply = torch.rand(B, M, generator=gen) + 0.5
    demand = torch.ones(B, N)
    supply[0, 4:] = 0  # padded rows
    demand[1, 30:] = 0  # padded columns
    supply[3], demand[3] = 0, 0  # nothing at all
    supply = supply / supply.sum(1, keepdim=True).clamp(min=1e-9) * demand.sum(1, keepdim=True)
    mask = torch.ones(B, M, N, dtype=torch.bool)
    mask[2, 1] = False  # a real row with no allowed entry
    for eps in (1.0, 0.1, 1e-3):
        for dtype in (torch.float32, torch.float64):
            plan = sinkhorn(cost.to(dtype), supply.to(dtype), demand.to(dtype), eps=eps, iters=50, mask=mask)
            assert torch.isfinite(plan).all() and (plan >= 0).all()
            assert plan[0, 4:].sum() == 0 and plan[1, :, 30:].sum() == 0 and plan[3].sum() == 0 and plan[2, 1].sum() == 0
            if dtype == torch.float64:  # float32 cannot resolve potentials of 1e6/1e-3 = 1e9 to 1e-4
                torch.testing.assert_close(plan.sum(2)[[0, 1]], supply[[0, 1]].to(dtype), rtol=1e-6, atol=1e-6)
