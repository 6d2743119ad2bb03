"""Tiny torch.distributed helpers that are no-ops in a single process."""

import torch.distributed as dist
from torch import Tensor

__all__ = ["is_dist", "rank", "world_size", "is_main", "all_reduce_mean"]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over ranks (a copy); `x` itself when not distributed."""
    if not is_dist():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()
