"""torch.distributed helpers: launcher detection, process-group setup, and no-ops in one process.

A run is distributed when a launcher started it: torchrun / torch.distributed.run (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment), or SLURM `srun` with
one task per GPU (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR must be exported by
the job script, MASTER_PORT defaults to 29500). `otadet train device=0,1,...` starts torchrun
itself (otadet.engine.launch).
"""

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .log import LOGGER

__all__ = [
    "DistEnv",
    "dist_env",
    "init_distributed",
    "is_dist",
    "rank",
    "world_size",
    "is_main",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "broadcast_object",
    "main_process_first",
]


class DistEnv(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # 'torchrun' | 'slurm'


def dist_env(environ: dict | None = None) -> DistEnv | None:
    """The launcher's ranks read from the environment, or None for a single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), "torchrun") if world > 1 else None
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        if "MASTER_ADDR" not in env:
            raise RuntimeError(
                "SLURM job with several tasks but no MASTER_ADDR: add "
                "`export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)` to the job script "
                "(see docs/training.md)"
            )
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    return None


def init_distributed(env: DistEnv, device: torch.device, timeout_min: float = 60.0) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU. Idempotent."""
    if is_dist():
        return
    # init_method env:// reads these; SLURM does not set them.
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Validation runs on rank 0 while the others wait: the timeout must cover a full COCO val.
    dist.init_process_group(
        backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(minutes=timeout_min),
        **({"device_id": device} if device.type == "cuda" else {}),
    )  # fmt: skip
    if env.rank != 0:
        LOGGER.setLevel("WARNING")  # only rank 0 talks


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


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (e.g. a stop signal that reached one rank)."""
    if not is_dist():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (picklable objects, e.g. the run folder)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_process_first():
    """Rank 0 runs the block first, the others after it (e.g. generating or caching data once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
