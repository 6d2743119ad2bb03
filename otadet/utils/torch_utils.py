"""Device selection, mixed-precision settings, model summary, seeding."""

import os
import random
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .log import LOGGER

__all__ = ["select_device", "device_list", "AmpSettings", "resolve_amp", "cpu_bf16_supported", "cpu_has_amx", "model_summary", "seed_everything"]


def device_list(device: str | int | None) -> list[str]:
    """'0,1,2' -> ['0', '1', '2']; one device -> a one-item list; None -> []."""
    if device is None or device == "":
        return []
    return [d.strip() for d in str(device).split(",") if d.strip()]


def select_device(device: str | int | None = None, local_rank: int | None = None) -> torch.device:
    """None -> cuda:0 if available else cpu; 'cpu'; 0 / '0' / 'cuda:0'. Fails clearly on a missing GPU.

    In a distributed run `local_rank` picks this process's GPU: the local_rank-th of a list like
    '0,1,2,3', or cuda:<local_rank> when device is None. device=cpu keeps every rank on the CPU.
    """
    if local_rank is not None:
        devices = device_list(device)
        if devices == ["cpu"] or (not devices and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not devices:
            device = local_rank
        elif len(devices) > 1:
            if local_rank >= len(devices):
                raise ValueError(f"device={device!r} lists {len(devices)} GPUs but this is local rank {local_rank}")
            device = devices[local_rank]
    if device is None or device == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        text = text.split(":", 1)[1] if ":" in text else "0"
    if "," in text:
        text = text.split(",")[0]  # a single process on the first listed GPU
    if not text.isdigit():
        raise ValueError(f"device={device!r}: expected cpu, a CUDA index like 0, or cuda:0")
    if not torch.cuda.is_available() or int(text) >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r}: CUDA device {text} is not available "
            f"({torch.cuda.device_count()} visible); use device=cpu"
        )
    return torch.device(f"cuda:{text}")


class AmpSettings(NamedTuple):
    enabled: bool  # run the model forward under torch.autocast
    dtype: torch.dtype  # autocast dtype (float32 when disabled)
    scaler: bool  # fp16 needs a GradScaler against gradient underflow; bf16 does not
    note: str  # what was chosen and why, for the log


def _cpu_capabilities() -> dict:
    try:  # torch >= 2.6 reports the CPU's instruction sets (cpuinfo)
        return torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return {}


def cpu_bf16_supported() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512_BF16 or AMX-BF16): without it oneDNN emulates
    bf16 with float32 instructions plus conversions, slower than float32 itself."""
    caps = _cpu_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 and int8 matrix units; `lscpu` flag amx_tile)."""
    caps = _cpu_capabilities()
    return bool(caps.get("amx_tile") and (caps.get("amx_bf16") or caps.get("amx_int8")))


def resolve_amp(amp: bool, device: torch.device, *, bf16_supported: bool | None = None) -> AmpSettings:
    """Mixed-precision settings for `amp` on `device`: CUDA -> bf16 where the GPU supports it
    (Ampere and newer), else fp16 with a GradScaler; CPU -> bf16 autocast where the CPU has bf16
    arithmetic (AVX512_BF16 / AMX), else off with a note (emulated bf16 is slower than float32).
    `bf16_supported` None asks torch.cuda.is_bf16_supported() or cpu_bf16_supported()."""
    if not amp:
        return AmpSettings(False, torch.float32, False, "amp off: float32")
    if device.type == "cpu":
        if bf16_supported is None:
            bf16_supported = cpu_bf16_supported()
        if bf16_supported:
            return AmpSettings(True, torch.bfloat16, False, "amp: bfloat16 autocast on the CPU (assigner and losses in float32)")
        return AmpSettings(False, torch.float32, False, "amp=True has no effect on this CPU (no avx512_bf16/amx_bf16): training in float32")
    if device.type != "cuda":
        return AmpSettings(False, torch.float32, False, f"amp=True has no effect on {device.type}: training in float32")
    if bf16_supported is None:
        with torch.cuda.device(device):
            bf16_supported = torch.cuda.is_bf16_supported()
    if bf16_supported:
        return AmpSettings(True, torch.bfloat16, False, "amp: bfloat16 autocast (assigner and losses in float32)")
    return AmpSettings(True, torch.float16, True, "amp: float16 autocast with GradScaler (no bf16 on this GPU; assigner and losses in float32)")


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
