"""Solving OTA's transport problem over a set of columns and reading the assignment off the plan.

Candidate compaction: an anchor that is no gt's candidate costs >= 1e6 from every gt, so the
gts send it exactly 0 (exp(-1e7) underflows) and the background takes its whole unit.
There column j's potential is g_j = C_bg,j/eps - f_bg, so the D such anchors enter the
background row's sum only as D*exp(f_bg + g_j - C_bg,j/eps) = D, whatever their costs. One
virtual column of demand D that only the background reaches reproduces that term, so the
iterates over the kept columns equal the full problem's, not only the limit. That holds while
the gts really send nothing to dropped columns, which `leak_bound` certifies after the solve.

Shapes: B=batch, M=G+1 suppliers (gts, then the background last), A=anchor points,
K=kept anchors (padded to the batch's largest).
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .sinkhorn import sinkhorn_potentials

__all__ = ["Solved", "DensePlan", "read_out", "kept_order", "solve_kept", "leak_bound", "leaks", "orphan_columns", "AMBIGUOUS_SHARE", "LEAK_TOL"]

AMBIGUOUS_SHARE = 0.9  # N_amb (the paper's ambiguity statistic): an anchor is ambiguous when no supplier sends it >= 90% of its unit
LEAK_TOL = 1e-8  # mass a gt may send to dropped columns (bounded after the solve) for the solve to count as exact
ORPHAN_WINDOW = 10.0  # orphan columns kept first: relative cost within this many eps of the row's best (more if leak_bound asks)
ORPHAN_TOP = 64  # ... and at least this many of its cheapest columns


class Solved(NamedTuple):
    choice: Tensor  # (B, K) supplier of each kept anchor in [0, G]; G = background
    f: Tensor  # (B, M) row potentials (units of eps)
    marginal_error: Tensor  # () max |column sum - demand| per anchor
    num_ambiguous: Tensor  # () anchors whose largest share of their unit is < AMBIGUOUS_SHARE
    iters: int  # Sinkhorn iterations run


def kept_order(keep: Tensor) -> tuple[Tensor, Tensor]:
    """keep (B, A) bool -> order (B, K) the kept anchors first, in anchor order; kept (B, K) False = padding."""
    K = max(int(keep.sum(dim=1).max()), 1)
    order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
    return order, keep.gather(1, order)


def solve_kept(
    cost: Tensor, supply: Tensor, kept: Tensor, dropped: Tensor, eps: float, iters: int, tol: float | None, rescale: bool
) -> Solved:
    """Sinkhorn over the kept columns plus one background-only virtual column of demand `dropped`.

    cost (B, M, K), supply (B, M), kept (B, K) bool (False = padding column), dropped (B,).
    """
    B, M, K = cost.shape
    dropped = dropped.to(cost.dtype)
    cost = torch.cat((cost, cost.new_zeros(B, M, 1)), dim=2)  # (B, M, K+1)
    demand = torch.cat((kept.to(cost.dtype), dropped[:, None]), dim=1)  # (B, K+1): one unit per anchor
    mask = torch.ones(B, M, K + 1, dtype=torch.bool, device=cost.device)
    mask[:, :-1, K] = False  # the virtual column: background only
    solution = sinkhorn_potentials(cost, supply, demand, eps=eps, iters=iters, mask=mask, tol=tol)
    plan = solution.plan()  # (B, M, K+1)
    plan = DensePlan(values=plan[:, :, :K], columns=plan.sum(dim=1), virtual=plan[:, -1, K])
    choice, marginal_error, num_ambiguous = read_out(plan, demand, kept, dropped, rescale)
    return Solved(choice, solution.f, marginal_error, num_ambiguous, solution.iters)


class DensePlan(NamedTuple):
    """A transport plan stored whole (the dense solve's), for `read_out`."""

    values: Tensor  # (B, M, K) the kept columns
    columns: Tensor  # (B, K+1) column sums, the virtual column last
    virtual: Tensor  # (B,) the virtual column's one entry (the background's)

    @property
    def suppliers(self) -> int:  # M
        return self.values.shape[1]

    def column_max(self) -> Tensor:  # (B, K)
        return self.values.amax(dim=1)

    def row_max(self) -> Tensor:  # (B, M) over the kept columns
        return self.values.amax(dim=2)

    def rows_divided(self, row_max: Tensor) -> "DensePlan":
        """Each row divided by row_max (B, M) where that is > 0."""
        scale = row_max[:, :, None]  # (B, M, 1)
        return self._replace(values=torch.where(scale > 0, self.values / scale, self.values))

    def first_argmax(self) -> Tensor:  # (B, K) the supplier of the largest entry, first on ties
        return self.values.argmax(dim=1)


def read_out(plan, demand: Tensor, kept: Tensor, dropped: Tensor, rescale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The assignment and the statistics of a plan, however it is stored (DensePlan, _sparse.PairPlan).

    demand (B, K+1) (the virtual column's is `dropped`), kept (B, K), dropped (B,) ->
    choice (B, K) supplier of each kept anchor (M-1 = background at padding), marginal_error (),
    num_ambiguous ().
    """
    K = kept.shape[1]
    # Per anchor: the virtual column's error is shared by its D anchors alike.
    marginal_error = ((plan.columns - demand).abs() / demand.clamp(min=1) * (demand > 0)).amax()
    # A column is one unit: an anchor whose max share is < 0.9 necessarily gets >= 0.1 foreground mass.
    shares = plan.column_max() / plan.columns[:, :K].clamp(min=torch.finfo(plan.columns.dtype).tiny)  # (B, K)
    num_ambiguous = ((shares < AMBIGUOUS_SHARE) & kept).sum()
    if rescale:
        # Official code: scale each supplier's row so its largest share is 1. Each dropped anchor
        # gets the virtual column's background share per unit (1 once converged): the background
        # row's max over all anchors counts it.
        row_max = plan.row_max()  # (B, M)
        row_max[:, -1] = row_max[:, -1].maximum(plan.virtual / dropped.clamp(min=1))
        plan = plan.rows_divided(row_max)
    choice = torch.where(kept, plan.first_argmax(), plan.suppliers - 1)  # (B, K)
    return choice, marginal_error, num_ambiguous


def leak_bound(f: Tensor, relative_cost: Tensor, keep: Tensor) -> Tensor:
    """Log of an upper bound on the mass each gt sends to the dropped anchors -> (B, G, A).

    Gt i's share of a dropped column j is exp(f_i + g_j - C_ij/eps) and g_j <= C_bg,j/eps - f_bg,
    so it is at most exp(f_i - f_bg - r_ij), r_ij = (C_ij - C_bg,j)/eps = relative_cost (B, G, A).
    -inf at kept anchors.
    """
    return (f[:, :-1, None] - f[:, -1:, None] - relative_cost).masked_fill(keep[:, None, :], float("-inf"))


def leaks(log_bound: Tensor) -> bool:
    """Whether some gt may send more than LEAK_TOL in all to dropped anchors (NaN counts as yes)."""
    return not bool(torch.logsumexp(log_bound, dim=2).amax() <= math.log(LEAK_TOL))


def orphan_columns(relative_cost: Tensor, orphans: Tensor) -> Tensor:
    """Columns an orphan row (a gt with no candidate, so every anchor is open to it) may send to.

    Where only the background competes, an orphan's share of column j is about
    exp(f_o - f_bg - r_oj), so its mass sits on the columns of least r_oj: keep those within
    ORPHAN_WINDOW of the best, and at least its ORPHAN_TOP best.
    relative_cost (B, G, A) r_ij, orphans (B, G) -> (B, A) bool.
    """
    rel = relative_cost.masked_fill(~orphans[:, :, None], float("inf"))
    near = rel <= rel.amin(dim=2, keepdim=True) + ORPHAN_WINDOW  # (B, G, A)
    top = rel.topk(min(ORPHAN_TOP, rel.shape[2]), dim=2, largest=False).indices  # (B, G, T)
    near.scatter_(2, top, True)
    return (near & orphans[:, :, None]).any(dim=1)
