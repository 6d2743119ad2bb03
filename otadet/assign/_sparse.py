"""OTA's transport problem solved over its support: the (gt, candidate) pairs and the background row.

Every anchor is a candidate of a few gts only; the other entries of a gt's row cost >= 1e6 and
carry nothing (exp(-1e7) is 0 in float32), yet a dense (G+1, K) Sinkhorn spends two exp passes
over every entry per iteration. Over the support the same iterations cost O(pairs). The images
of a batch are flattened into one problem (rows = (image, supplier), columns = (image, column)),
so no image pads another. The iterates are the dense ones up to the order of float sums, so the
assignment is the dense solve's (tested); the mass left out is bounded after the solve by the
caller (otadet.assign.ota), as for compaction.

Shapes: B=batch, M=suppliers (gts, background last), K=kept columns, P=support pairs,
R=B*M rows, N=B*(K+1) columns (each image's K columns, then its virtual column).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ._transport import Solved, read_out
from .sinkhorn import CHECK_EVERY, columns_within

__all__ = ["segment_logsumexp", "sparse_sinkhorn_potentials", "solve_support", "PairPlan"]


def segment_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """logsumexp of values (P,) grouped by index (P,) -> (size,); 0 for an empty or all -inf group
    (as the dense solver's _lse)."""
    top = values.new_full((size,), float("-inf")).scatter_reduce_(0, index, values, "amax")
    top = top.masked_fill(torch.isneginf(top), 0.0)
    total = values.new_zeros(size).index_add_(0, index, torch.exp(values - top[index]))
    out = top + total.log()
    return out.masked_fill(torch.isneginf(out), 0.0)


class SparsePotentials(NamedTuple):
    """Dual potentials in units of eps: plan value of pair p = exp(kernel[p] + f[rows[p]] + g[cols[p]])."""

    f: Tensor  # (R,) row potentials, -inf for zero-supply rows
    g: Tensor  # (N,) column potentials, -inf for zero-demand columns
    iters: int


def sparse_sinkhorn_potentials(
    kernel: Tensor, rows: Tensor, cols: Tensor, supply: Tensor, demand: Tensor, iters: int, tol: float | None
) -> SparsePotentials:
    """The dense solver's iterations (sinkhorn.sinkhorn_potentials) over the pairs (rows, cols) only.

    kernel (P,) = -cost/eps of each pair, rows (P,) in [0, R), cols (P,) in [0, N),
    supply (R,), demand (N,), both >= 0. Entries that are not pairs carry nothing.
    """
    R, N = supply.shape[0], demand.shape[0]
    log_a, log_b = supply.log(), demand.log()  # -inf for padding
    f = torch.where(torch.isneginf(log_a), log_a, torch.zeros_like(log_a))
    g = torch.zeros_like(log_b)
    done = 0
    for it in range(iters):
        g_new = log_b - segment_logsumexp(kernel + f[rows], cols, N)  # columns: demand
        f_new = log_a - segment_logsumexp(kernel + g_new[cols], rows, R)  # rows: supply
        if tol is not None and it > 0 and it % CHECK_EVERY == 0 and columns_within(tol, g, g_new, demand):
            break
        g, f = g_new, f_new
        done = it + 1
    return SparsePotentials(f, g, done)


def solve_support(
    cost: Tensor, support: Tensor, supply: Tensor, kept: Tensor, dropped: Tensor,
    eps: float, iters: int, tol: float | None, rescale: bool,
) -> Solved:  # fmt: skip
    """_transport.solve_kept over the support only: the same Solved, from O(pairs) work per iteration.

    cost (B, M, K) (read at the support only), support (B, M, K) bool (pairs that may carry
    mass; the background row's is `kept`), supply (B, M), kept (B, K), dropped (B,) anchors
    left out by compaction (the background-only virtual column's demand).
    """
    B, M, K = cost.shape
    dtype = cost.dtype
    virtual = torch.zeros(B, M, 1, dtype=torch.bool, device=cost.device)
    virtual[:, -1] = True  # the virtual column: background only
    b, i, j = torch.cat((support & kept[:, None, :], virtual), dim=2).nonzero(as_tuple=True)  # (P,) each
    is_virtual = j == K
    kernel = cost[b, i, j.clamp(max=K - 1)].masked_fill(is_virtual, 0.0) / -eps  # (P,)
    rows, cols = b * M + i, b * (K + 1) + j
    demand = torch.cat((kept.to(dtype), dropped.to(dtype)[:, None]), dim=1).reshape(-1)  # (N,)
    solution = sparse_sinkhorn_potentials(kernel, rows, cols, supply.to(dtype).reshape(-1), demand, iters, tol)

    plan = torch.exp(kernel + solution.f[rows] + solution.g[cols])  # (P,)
    real = ~is_virtual
    plan = PairPlan(
        values=plan[real], rows=rows[real], cols=cols[real], suppliers_of=i[real], suppliers=M,
        columns=plan.new_zeros(B * (K + 1)).index_add_(0, cols, plan).reshape(B, K + 1),
        virtual=plan.new_zeros(B).index_add_(0, b[is_virtual], plan[is_virtual]),  # one pair per image
    )  # fmt: skip
    demand = demand.reshape(B, K + 1)
    choice, marginal_error, num_ambiguous = read_out(plan, demand, kept, dropped.to(dtype), rescale)
    return Solved(choice, solution.f.reshape(B, M), marginal_error, num_ambiguous, solution.iters)


class PairPlan(NamedTuple):
    """A transport plan stored as its support pairs (the sparse solve's), for _transport.read_out.
    Columns are numbered image by image, K+1 each (the virtual column last)."""

    values: Tensor  # (P,) the plan at the pairs of kept columns
    rows: Tensor  # (P,) row of each pair, image * M + supplier
    cols: Tensor  # (P,) column of each pair, image * (K+1) + column
    suppliers_of: Tensor  # (P,) supplier of each pair, in [0, M)
    suppliers: int  # M
    columns: Tensor  # (B, K+1) column sums, virtual column included
    virtual: Tensor  # (B,) the virtual column's one entry (the background's)

    def column_max(self) -> Tensor:  # (B, K)
        B, K1 = self.columns.shape
        return self.values.new_zeros(B * K1).scatter_reduce_(0, self.cols, self.values, "amax").reshape(B, K1)[:, :-1]

    def row_max(self) -> Tensor:  # (B, M)
        B = self.columns.shape[0]
        return self.values.new_zeros(B * self.suppliers).scatter_reduce_(0, self.rows, self.values, "amax").reshape(B, -1)

    def rows_divided(self, row_max: Tensor) -> "PairPlan":
        """Each row divided by row_max (B, M) where that is > 0."""
        scale = row_max.reshape(-1)[self.rows]  # (P,)
        return self._replace(values=torch.where(scale > 0, self.values / scale, self.values))

    def first_argmax(self) -> Tensor:
        """(B, K) the supplier of each column's largest entry, first on ties (as torch.argmax
        over the dense column); M for a column without pairs."""
        B, K1 = self.columns.shape
        best = self.values.new_full((B * K1,), float("-inf")).scatter_reduce_(0, self.cols, self.values, "amax")
        candidate_row = torch.where(self.values == best[self.cols], self.suppliers_of, self.suppliers)  # (P,)
        choice = torch.full((B * K1,), self.suppliers, dtype=torch.long, device=self.values.device)
        return choice.scatter_reduce_(0, self.cols, candidate_row, "amin").reshape(B, K1)[:, :-1]
