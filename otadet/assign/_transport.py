"""Solving OTA's transport problem and reading the assignment off the plan.

Two exact ways: over every anchor (`transport`), or over the anchors some gt can reach plus
one virtual column (`transport_compacted`), which is the same problem made small.

Shapes: B=batch, M=G+1 suppliers (gts, then the background last), A=anchor points,
K=kept anchors.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .sinkhorn import sinkhorn_potentials

__all__ = ["Transport", "transport", "transport_compacted", "orphan_columns", "AMBIGUOUS_SHARE", "LEAK_TOL"]

AMBIGUOUS_SHARE = 0.9  # paper Sec. 4.3: an anchor is ambiguous when no supplier sends it >= 90% of its unit
LEAK_TOL = 1e-8  # mass a compacted solve may leave out (bounded a posteriori) and still count as exact
ORPHAN_WINDOW = 30.0  # orphan columns kept: relative cost within this many eps of the row's best
ORPHAN_TOP = 64  # ... and at least this many of its cheapest columns


class Transport(NamedTuple):
    supplier: Tensor  # (B, A) int64 in [0, G]; G = background
    marginal_error: Tensor  # () max |column sum - demand| of the returned plan
    num_ambiguous: Tensor  # () anchors whose largest share of their unit is < AMBIGUOUS_SHARE
    iters: int  # Sinkhorn iterations run
    compacted: bool  # whether the compacted solve was used


def _decode(plan: Tensor, present: Tensor, rescale: bool, background_max: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """plan (B, M, N) with present columns (B, N) -> supplier (B, N), number of ambiguous anchors ()."""
    column = plan.sum(dim=1)  # (B, N)
    # Each column is one unit: an anchor with max share < 0.9 necessarily gets >= 0.1 foreground mass.
    shares = plan.amax(dim=1) / column.clamp(min=torch.finfo(plan.dtype).tiny)  # (B, N)
    num_ambiguous = ((shares < AMBIGUOUS_SHARE) & present).sum()
    if rescale:
        # Official code: scale each supplier's row so its largest share is 1.
        row_max = plan.amax(dim=2, keepdim=True)  # (B, M, 1)
        if background_max is not None:
            row_max[:, -1, 0] = row_max[:, -1, 0].maximum(background_max)
        plan = torch.where(row_max > 0, plan / row_max, plan)
    return plan.argmax(dim=1), num_ambiguous


def transport(cost: Tensor, supply: Tensor, eps: float, iters: int, tol: float | None, rescale: bool) -> Transport:
    """Sinkhorn over every anchor. cost (B, M, A), supply (B, M); every anchor demands one unit."""
    demand = cost.new_ones(cost.shape[0], cost.shape[2])  # (B, A)
    solution = sinkhorn_potentials(cost, supply, demand, eps=eps, iters=iters, tol=tol)
    plan = solution.plan()  # (B, M, A)
    marginal_error = (plan.sum(dim=1) - demand).abs().amax()
    supplier, num_ambiguous = _decode(plan, demand > 0, rescale)
    return Transport(supplier, marginal_error, num_ambiguous, solution.iters, False)


def orphan_columns(cost: Tensor, orphans: Tensor, eps: float) -> Tensor:
    """Columns an orphan row (a gt with no candidate, so every anchor is open to it) may send to.

    Where only the background competes, an orphan's share of column j is about
    exp(f_o - f_bg - r_oj) with r_oj = (C_oj - C_bg,j)/eps, so its mass sits on the columns of
    least r_oj: keep those within ORPHAN_WINDOW of the best, and at least its ORPHAN_TOP best.
    cost (B, M, A), orphans (B, G) -> (B, A) bool.
    """
    rel = (cost[:, :-1] - cost[:, -1:]) / eps  # (B, G, A)
    rel = rel.masked_fill(~orphans[:, :, None], float("inf"))
    near = rel <= rel.amin(dim=2, keepdim=True) + ORPHAN_WINDOW  # (B, G, A)
    top = rel.topk(min(ORPHAN_TOP, rel.shape[2]), dim=2, largest=False).indices  # (B, G, T)
    near.scatter_(2, top, True)
    return (near & orphans[:, :, None]).any(dim=1)


def transport_compacted(
    cost: Tensor, supply: Tensor, keep: Tensor, eps: float, iters: int, tol: float | None, rescale: bool
) -> Transport:
    """The same assignment as `transport`, solving over the K anchors in `keep` (B, A).

    `keep` holds every candidate (and the columns orphan gts may reach, orphan_columns). At
    any other anchor the gts pay >= 1e6 and send exactly 0 (exp(-1e7) underflows), and the
    background takes its whole unit: there column j's potential is g_j = C_bg,j/eps - f_bg,
    so the D dropped anchors enter the background row's sum only as
    D*exp(f_bg + g_j - C_bg,j/eps) = D. One virtual column of demand D that only the
    background reaches reproduces that term, so the iterates equal the full problem's, not
    only the limit.

    That holds while the gts really send nothing outside `keep`, which the solve certifies:
    gt i's mass on a dropped column j is at most exp(f_i - f_bg - r_ij), r_ij =
    (C_ij - C_bg,j)/eps (as g_j <= C_bg,j/eps - f_bg). Two cases need it: an orphan (no
    candidate; every anchor is open to it) and a crowd of gts whose k's add up to more than
    their candidates, whose excess the full problem ships to non-candidates at +1e6. While
    the bound summed over dropped columns exceeds LEAK_TOL for some gt, the columns where it
    is not negligible are added and the solve repeated (after 4 rounds: solved in full).
    cost (B, G+1, A), supply (B, G+1), keep (B, A) bool.
    """
    B, M, A = cost.shape
    rel = (cost[:, :-1] - cost[:, -1:]) / eps  # (B, G, A)
    for _ in range(4):
        solution, order, kept, demand, dropped = _solve_kept(cost, supply, keep, eps, iters, tol)
        f = solution.f
        bound = (f[:, :-1, None] - f[:, -1:, None] - rel).masked_fill(keep[:, None, :], float("-inf"))  # (B, G, A)
        if bool(torch.logsumexp(bound, dim=2).amax() <= math.log(LEAK_TOL)):  # NaN (no background supply) fails too
            break
        keep = keep | (bound > math.log(LEAK_TOL / A)).any(dim=1)
    else:
        return transport(cost, supply, eps, iters, tol, rescale)
    K = order.shape[1]
    plan = solution.plan()  # (B, M, K+1)
    # Per anchor: the virtual column's error is shared by its D anchors alike.
    marginal_error = ((plan.sum(dim=1) - demand).abs() / demand.clamp(min=1) * (demand > 0)).amax()
    # Each dropped anchor gets the virtual column's background share per unit: exp(f_bg - f_bg_previous),
    # 1 once converged. The background row's max over all anchors counts it.
    background_max = plan[:, -1, K] / dropped.clamp(min=1)  # (B,)
    choice, num_ambiguous = _decode(plan[:, :, :K], kept, rescale, background_max)
    supplier = torch.full((B, A), M - 1, dtype=torch.long, device=cost.device)  # background
    supplier.scatter_(1, order, torch.where(kept, choice, M - 1))
    return Transport(supplier, marginal_error, num_ambiguous, solution.iters, True)


def _solve_kept(cost: Tensor, supply: Tensor, keep: Tensor, eps: float, iters: int, tol: float | None):
    """Sinkhorn over the kept columns plus the background-only virtual column.
    -> potentials, order (B, K) of the kept anchors, kept (B, K) (False = padding), demand (B, K+1), dropped (B,)."""
    B, M, A = cost.shape
    K = max(int(keep.sum(dim=1).max()), 1)
    # Kept anchors first (stable: in anchor order), padded to the batch's largest K.
    order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
    kept = keep.gather(1, order)  # (B, K) False = padding column
    dropped = (A - keep.sum(dim=1)).to(cost.dtype)  # (B,)
    cost_k = torch.cat((cost.gather(2, order[:, None, :].expand(B, M, K)), cost.new_zeros(B, M, 1)), dim=2)
    demand = torch.cat((kept.to(cost.dtype), dropped[:, None]), dim=1)  # (B, K+1)
    mask = torch.ones(B, M, K + 1, dtype=torch.bool, device=cost.device)
    mask[:, :-1, K] = False  # the virtual column: background only
    solution = sinkhorn_potentials(cost_k, supply, demand, eps=eps, iters=iters, mask=mask, tol=tol)
    return solution, order, kept, demand, dropped
