"""Entropic optimal transport by Sinkhorn-Knopp, in the log domain, batched.

OTA (Ge et al., CVPR 2021, Sec. 3.2) solves  min_pi <C, pi> - eps*H(pi)  subject to
pi 1 = supply, pi^T 1 = demand. The iterations alternate the dual potentials
    g_j = log b_j - LSE_i((f_i - C_ij) / eps)      (columns: demand)
    f_i = log a_i - LSE_j((g_j - C_ij) / eps)      (rows: supply)
kept in units of eps, so costs up to 1e6 with eps down to 1e-3 stay finite in float32.
Column first then row, as the official OTA code, so rows match `supply` exactly on return.

Shapes: B=batch, M=suppliers (gts + background), N=demanders (anchor points).
"""

import torch
from torch import Tensor

__all__ = ["sinkhorn"]


def _lse(x: Tensor, dim: int) -> Tensor:
    """logsumexp that returns 0 instead of -inf for an all -inf slice (a fully absent row/column)."""
    out = torch.logsumexp(x, dim=dim)
    return out.masked_fill(torch.isneginf(out), 0.0)


@torch.no_grad()
def sinkhorn(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    eps: float = 0.1,
    iters: int = 50,
    mask: Tensor | None = None,
) -> Tensor:
    """Entropic OT plan for a batch of problems.

    Args:
        cost: (B, M, N) transport cost, finite where present.
        supply: (B, M) row marginals, >= 0 (0 = padded row, gets nothing).
        demand: (B, N) column marginals, >= 0 (0 = padded column).
        eps: entropic regularisation.
        iters: number of (column, row) update pairs.
        mask: optional (B, M, N) bool, False = entry absent (never transports).
    Returns:
        plan (B, M, N), float32 (float64 if `cost` is float64). Rows sum to `supply`;
        columns to `demand` up to convergence.
    """
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    kernel = cost.to(dtype) / -eps  # (B, M, N)
    if mask is not None:
        kernel = kernel.masked_fill(~mask, float("-inf"))
    log_a = supply.to(dtype).log()  # (B, M); -inf for padded rows
    log_b = demand.to(dtype).log()  # (B, N)
    # Padded rows start (and stay) at -inf so they take no part in the first column update.
    f = torch.where(torch.isneginf(log_a), log_a, torch.zeros_like(log_a))
    g = torch.zeros_like(log_b)
    for _ in range(iters):
        g = log_b - _lse(kernel + f[:, :, None], dim=1)  # (B, N)
        f = log_a - _lse(kernel + g[:, None, :], dim=2)  # (B, M)
    return torch.exp(kernel + f[:, :, None] + g[:, None, :])
