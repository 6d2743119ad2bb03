"""sinkhorn against POT (an independent optimal-transport library) and exact OT (ot.emd)."""

import numpy as np
import ot
import pytest
import torch

from otadet.assign import sinkhorn


def _problem(rng, m, n):
    cost = rng.random((m, n)) * 5
    supply = rng.random(m) + 0.1
    demand = rng.random(n) + 0.1
    demand *= supply.sum() / demand.sum()
    return cost, supply, demand


@pytest.mark.parametrize("m,n,eps", [(2, 10, 0.5), (5, 40, 0.2), (30, 300, 0.1), (100, 2000, 1.0)])
def test_plan_matches_pot(m, n, eps):
    rng = np.random.default_rng(m * 1000 + n)
    cost, supply, demand = _problem(rng, m, n)
    iters = 3000 if m * n < 50_000 else 500  # eps = 1 converges in far fewer iterations
    ours = sinkhorn(
        torch.from_numpy(cost)[None], torch.from_numpy(supply)[None], torch.from_numpy(demand)[None], eps=eps, iters=iters
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
