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

from ._transport import AMBIGUOUS_SHARE, Solved
from .sinkhorn import CHECK_EVERY, columns_within

__all__ = ["segment_logsumexp", "sparse_sinkhorn_potentials", "solve_support"]


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

    R, N = B * M, B * (K + 1)
    plan = torch.exp(kernel + solution.f[rows] + solution.g[cols])  # (P,)
    column = plan.new_zeros(N).index_add_(0, cols, plan)  # (N,)
    marginal_error = ((column - demand).abs() / demand.clamp(min=1) * (demand > 0)).amax()
    # Each dropped anchor gets the virtual column's background share per unit.
    background_max = plan.new_zeros(B).index_add_(0, b[is_virtual], plan[is_virtual]) / dropped.to(dtype).clamp(min=1)
    real = ~is_virtual
    plan, rows, cols, i = plan[real], rows[real], cols[real], i[real]
    largest = plan.new_zeros(N).scatter_reduce_(0, cols, plan, "amax")  # (N,)
    shares = largest / column.clamp(min=torch.finfo(dtype).tiny)
    kept_columns = torch.cat((kept, kept.new_zeros(B, 1)), dim=1).reshape(-1)  # (N,)
    num_ambiguous = ((shares < AMBIGUOUS_SHARE) & kept_columns).sum()
    if rescale:
        # Official code: scale each supplier's row so its largest share is 1.
        row_max = plan.new_zeros(R).scatter_reduce_(0, rows, plan, "amax").reshape(B, M)
        row_max[:, -1] = row_max[:, -1].maximum(background_max)
        row_max = row_max.reshape(-1)[rows]  # (P,)
        plan = torch.where(row_max > 0, plan / row_max, plan)
    # The argmax over suppliers, first on ties (as torch.argmax over the dense column).
    best = plan.new_full((N,), float("-inf")).scatter_reduce_(0, cols, plan, "amax")
    candidate_row = torch.where(plan == best[cols], i, M)  # (P,)
    choice = torch.full((N,), M, dtype=torch.long, device=cost.device).scatter_reduce_(0, cols, candidate_row, "amin")
    choice = torch.where(kept, choice.reshape(B, K + 1)[:, :K], M - 1)  # (B, K)
    return Solved(choice, solution.f.reshape(B, M), marginal_error, num_ambiguous, solution.iters)
