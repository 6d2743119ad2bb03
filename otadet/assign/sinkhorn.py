"""Entropic optimal transport by Sinkhorn-Knopp, in the log domain, batched.

OTA (Ge et al., CVPR 2021, Sec. 3.2) solves  min_pi <C, pi> - eps*H(pi)  subject to
pi 1 = supply, pi^T 1 = demand. The iterations alternate the dual potentials
    g_j = log b_j - LSE_i((f_i - C_ij) / eps)      (columns: demand)
    f_i = log a_i - LSE_j((g_j - C_ij) / eps)      (rows: supply)
kept in units of eps, so costs up to 1e6 with eps down to 1e-3 stay finite in float32.
Column first then row, as the official OTA code, so rows match `supply` exactly on return.

Early stop: the column update itself measures the marginal error of the previous plan
(its column sums are b_j * exp(g_j_old - g_j_new)), so checking `tol` costs no extra
pass, only a host sync every CHECK_EVERY iterations.

Shapes: B=batch, M=suppliers (gts + background), N=demanders (anchor points).
"""

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["sinkhorn", "SinkhornPotentials", "sinkhorn_potentials"]

CHECK_EVERY = 5  # iterations between early-stop checks (each check is one host sync)


class SinkhornPotentials(NamedTuple):
    """Dual potentials in units of eps: plan = exp(kernel + f[:, :, None] + g[:, None, :])."""

    kernel: Tensor  # (B, M, N) -cost/eps, -inf where masked
    f: Tensor  # (B, M) row potentials, -inf for zero-supply rows
    g: Tensor  # (B, N) column potentials, -inf for zero-demand columns
    iters: int  # iterations run (< the requested number when tol stopped it early)

    def plan(self) -> Tensor:
        return torch.exp(self.kernel + self.f[:, :, None] + self.g[:, None, :])  # (B, M, N)


def _lse(x: Tensor, dim: int) -> Tensor:
    """logsumexp that returns 0 instead of -inf for an all -inf slice (a fully absent row/column)."""
    out = torch.logsumexp(x, dim=dim)
    return out.masked_fill(torch.isneginf(out), 0.0)


def _iteration(kernel: Tensor, f: Tensor, log_a: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
    """One (column, row) update pair -> (g, f): (B, N), (B, M)."""
    g = log_b - _lse(kernel + f[:, :, None], dim=1)
    return g, log_a - _lse(kernel + g[:, None, :], dim=2)


def columns_within(tol: float, g: Tensor, g_new: Tensor, demand: Tensor) -> bool:
    """Whether every column sum of the plan with potentials (f, g) is within tol of demand (..., N)
    per unit of demand: |sum - d| <= tol * max(d, 1). (A column of d > 1 units stands for d
    columns of one, as OTA's virtual column of dropped anchors; OTA's marginal_error is the same
    measure.) Those sums are demand * exp(g - g_new), g_new being the next column update: no
    extra pass."""
    present = demand > 0
    sums = demand * torch.exp(torch.where(present, g - g_new, 0.0))
    return bool(((sums - demand).abs() / demand.clamp(min=1) * present).amax() < tol)


_fused_iteration = None  # torch.compile(_iteration), built on first CUDA use


def _iteration_for(device: torch.device):
    """On CUDA the eager update is ~20 small kernel launches, which dominate a 50-iteration solve
    at detection sizes; compiled (dynamic shapes, compiled once) it is two fused reductions.
    The CPU keeps the eager update (no compiler needed, and the reductions dominate there)."""
    global _fused_iteration
    if device.type != "cuda":
        return _iteration
    if _fused_iteration is None:
        _fused_iteration = torch.compile(_iteration, dynamic=True, fullgraph=True)
    return _fused_iteration


@torch.no_grad()
def sinkhorn_potentials(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    eps: float = 0.1,
    iters: int = 50,
    mask: Tensor | None = None,
    tol: float | None = None,
) -> SinkhornPotentials:
    """As `sinkhorn`, returning the dual potentials and the number of iterations run."""
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    kernel = cost.to(dtype) / -eps  # (B, M, N)
    if mask is not None:
        kernel = kernel.masked_fill(~mask, float("-inf"))
    log_a = supply.to(dtype).log()  # (B, M); -inf for padded rows
    log_b = demand.to(dtype).log()  # (B, N); -inf for padded columns
    # Padded rows start (and stay) at -inf so they take no part in the first column update.
    f = torch.where(torch.isneginf(log_a), log_a, torch.zeros_like(log_a))
    g = torch.zeros_like(log_b)
    step = _iteration_for(kernel.device)
    done = 0
    for it in range(iters):
        g_new, f_new = step(kernel, f, log_a, log_b)  # (B, N), (B, M)
        if tol is not None and it > 0 and it % CHECK_EVERY == 0 and columns_within(tol, g, g_new, demand.to(dtype)):
            break  # keep (f, g): its plan meets tol
        g, f = g_new, f_new
        done = it + 1
    return SinkhornPotentials(kernel, f, g, done)


@torch.no_grad()
def sinkhorn(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    eps: float = 0.1,
    iters: int = 50,
    mask: Tensor | None = None,
    tol: float | None = None,
) -> Tensor:
    """Entropic OT plan for a batch of problems.

    Args:
        cost: (B, M, N) transport cost, finite where present.
        supply: (B, M) row marginals, >= 0 (0 = padded row, gets nothing).
        demand: (B, N) column marginals, >= 0 (0 = padded column).
        eps: entropic regularisation.
        iters: (maximum) number of (column, row) update pairs.
        mask: optional (B, M, N) bool, False = entry absent (never transports).
        tol: stop early once every column sum is within tol of `demand` (absolute for a demand
            <= 1, per unit of demand above; checked every CHECK_EVERY iterations); None runs
            all `iters` (the official code's 50).
    Returns:
        plan (B, M, N), float32 (float64 if `cost` is float64). Rows sum to `supply`;
        columns to `demand` up to convergence. Finite for finite inputs.
    """
    return sinkhorn_potentials(cost, supply, demand, eps=eps, iters=iters, mask=mask, tol=tol).plan()
