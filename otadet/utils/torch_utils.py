"""Device selection, model summary, seeding."""

import os
import random

import numpy as np
import torch
from torch import nn

from .log import LOGGER

__all__ = ["select_device", "model_summary", "seed_everything"]


def select_device(device: str | int | None = None) -> torch.device:
    """None -> cuda:0 if available else cpu; 'cpu'; 0 / '0' / 'cuda:0'. Fails clearly on a missing GPU."""
    if device is None or device == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        text = text.split(":", 1)[1] if ":" in text else "0"
    if "," in text:
        text = text.split(",")[0]  # multi-GPU launch is handled by the trainer; each rank sets its own
    if not text.isdigit():
        raise ValueError(f"device={device!r}: expected cpu, a CUDA index like 0, or cuda:0")
    if not torch.cuda.is_available() or int(text) >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r}: CUDA device {text} is not available "
            f"({torch.cuda.device_count()} visible); use device=cpu"
        )
    return torch.device(f"cuda:{text}")


def model_summary(model: nn.Module, imgsz: int, name: str = "model") -> dict:
    """Log and return layers, parameters, gradients and GFLOPs at a square imgsz input."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = len(list(model.modules()))
    gflops = float("nan")
    try:
        from torch.utils.flop_counter import FlopCounterMode

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, imgsz, imgsz, device=device))
        model.train(was_training)
        # FlopCounterMode counts a multiply-add as 2 FLOPs.
        gflops = counter.get_total_flops() / 1e9
    except RuntimeError as e:  # an op without a FLOP formula should not stop a run
        LOGGER.warning(f"GFLOPs not computed: {e}")
    LOGGER.info(f"{name} summary: {layers} layers, {params:,} parameters, {grads:,} gradients, {gflops:.1f} GFLOPs at {imgsz}x{imgsz}")
    return {"layers": layers, "parameters": params, "gradients": grads, "gflops": gflops}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
