"""The learning-rate schedule: linear warmup, then x gamma at fixed points; linear lr scaling.

A run is iteration-based (`iters` > 0: stop after that many optimizer steps, as the paper's
"1x = 90k iterations") or epoch-based (`iters` = 0: `epochs` passes over the data). Either way
the schedule is a function of the global iteration only, so resuming at iteration i (with the
same or a longer total) needs nothing but i.

`lr_steps` are fractions of the total: 1x (90k) and 2x (180k) both decay at 2/3 and 8/9
(60k/80k and 120k/160k). Changing the total on resume therefore moves the decay points with
it ("extends the schedule"); `LRSchedule.describe` prints where they fall.
"""

import math
from dataclasses import dataclass

import torch

from ..config import Args
from ..utils.log import LOGGER

__all__ = ["REFERENCE_BATCH", "LRSchedule", "lr_factor", "scaled_lr", "plan_iterations"]

REFERENCE_BATCH = 16  # lr0 is given for this total batch (paper: 16 images on 8 GPUs)


def lr_factor(iteration: int, *, total: int, warmup_iters: int, warmup_factor: float, steps: list[float], gamma: float) -> float:
    """Multiplier of the base lr at `iteration`: linear warmup, then x gamma at each step fraction."""
    decay = gamma ** sum(iteration >= round(s * total) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return decay * (warmup_factor * (1 - alpha) + alpha)
    return decay


def scaled_lr(lr0: float, batch: int, *, log: bool = True) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr0 is for batch 16, so lr = lr0 * batch / 16."""
    lr = lr0 * batch / REFERENCE_BATCH
    if log and batch != REFERENCE_BATCH:
        LOGGER.info(f"lr scaled linearly for batch {batch}: {lr0} x {batch}/{REFERENCE_BATCH} = {lr:g}")
    return lr


@dataclass(frozen=True)
class LRSchedule:
    """lr at each global iteration (0-based: the lr used by the (i+1)-th optimizer step)."""

    base_lr: float
    total: int
    warmup_iters: int
    warmup_factor: float
    steps: tuple[float, ...]
    gamma: float

    @classmethod
    def from_args(cls, args: Args, total: int) -> "LRSchedule":
        return cls(
            base_lr=scaled_lr(args.lr0, args.batch, log=False), total=total, warmup_iters=args.warmup_iters,
            warmup_factor=args.warmup_factor, steps=tuple(args.lr_steps), gamma=args.lr_gamma,
        )  # fmt: skip

    def __call__(self, iteration: int) -> float:
        return self.base_lr * lr_factor(
            iteration, total=self.total, warmup_iters=self.warmup_iters, warmup_factor=self.warmup_factor,
            steps=list(self.steps), gamma=self.gamma,
        )  # fmt: skip

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every param group's lr for `iteration`; returns it."""
        lr = self(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def describe(self) -> str:
        decays = ", ".join(str(round(s * self.total)) for s in self.steps)
        return f"lr {self.base_lr:g}, warmup {self.warmup_iters} iterations, x{self.gamma:g} at iterations [{decays}] of {self.total}"


def plan_iterations(args: Args, iters_per_epoch: int) -> tuple[int, int]:
    """(total iterations, epochs) of the run: `iters` when > 0 (the last epoch stops early), else `epochs` passes."""
    if iters_per_epoch <= 0:
        raise ValueError("the training split gives no batches: check `data` and `batch`")
    if args.iters > 0:
        return args.iters, math.ceil(args.iters / iters_per_epoch)
    return args.epochs * iters_per_epoch, args.epochs
