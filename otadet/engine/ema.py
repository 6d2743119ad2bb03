"""Exponential moving average of the weights (`ema=True`), used for validation and saved weights.

After the u-th optimizer step every floating-point entry of the state dict (parameters and
BatchNorm running statistics) becomes

    ema = d_u * ema + (1 - d_u) * weights,    d_u = decay * (1 - exp(-u / tau))

The ramp keeps d_u small early on (u << tau), so the average follows the fast-moving weights
of the first iterations instead of remembering the random init; with decay 0.9998 the average
spans ~5k iterations once u >> tau (2000). Integer buffers (BN's num_batches_tracked) are copied.
The average is kept in float32 whatever the training precision.
"""

import copy
import math

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, *, decay: float = 0.9998, tau: float = 2000.0, updates: int = 0):
        if not 0.0 < decay < 1.0 or tau <= 0:
            raise ValueError(f"ema: need 0 < ema_decay < 1 and ema_tau > 0, got {decay}, {tau}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold `model`'s current weights in (call after each optimizer step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach().to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(source[name])

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
