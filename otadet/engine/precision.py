"""Inference precision: what `half=True` means on each device, for predict and val.

One key, the same meaning everywhere: run the network in the fast 16-bit format the device
has, and everything after it in float32.

- CUDA: float16 weights and inputs (`model.half()`), as before.
- A CPU with bf16 arithmetic (AVX512_BF16 or AMX, `lscpu` flags `avx512_bf16` / `amx_bf16`):
  bfloat16 autocast around the network forward. Weights stay float32; oneDNN runs the
  convolutions in bf16 (on AMX tiles where present). float16 is no option there: PyTorch's
  CPU float16 convolutions are slow reference kernels.
- A CPU without bf16: half=True would emulate bf16 and be slower than float32, so it runs in
  float32 and says so in one line.
- An exported ONNX/TorchScript model: the precision is the file's (an export with half=True,
  an int8 ONNX); predict/val do not change it (half=True on an FP32 file says so).
- An OpenVINO IR (float32 weights): half=True sets OpenVINO's bf16 inference precision hint
  on a CPU with bf16 arithmetic, and fails on one without (engine/openvino_ir.py).

Whatever the network ran in, its outputs are cast to float32 before scoring, NMS and the box
mapping (`float32_outputs`): the boxes are decoded from float32 points (the bf16 distances
are promoted), and NMS compares IoUs of float32 boxes.
"""

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from ..models.detector import DenseOutputs
from ..utils.log import LOGGER
from ..utils.torch_utils import cpu_bf16_supported
from .backend import ExportedModel

__all__ = [
    "InferencePrecision", "resolve_precision", "log_precision", "precision_for", "prepared", "evaluating", "forward",
    "float32_outputs",
]  # fmt: skip


class InferencePrecision(NamedTuple):
    name: str  # 'fp32' | 'fp16' | 'bf16' | 'file' (an exported model's own)
    half_weights: bool  # model.half() and float16 inputs (CUDA)
    autocast: torch.dtype | None  # torch.autocast dtype around the forward (CPU bf16)
    note: str  # what was chosen and why, for the log


FP32 = InferencePrecision("fp32", False, None, "float32")


def resolve_precision(
    half: bool, device: torch.device, *, exported: bool = False, bf16_supported: bool | None = None
) -> InferencePrecision:
    """What `half` means for a model on `device` (see the module docstring).

    bf16_supported None asks the CPU (utils.torch_utils.cpu_bf16_supported)."""
    if exported:
        return InferencePrecision("file", False, None, "the exported file's own precision")
    if not half:
        return FP32
    if device.type == "cuda":
        return InferencePrecision("fp16", True, None, "float16 weights and inputs (CUDA)")
    if device.type != "cpu":
        return InferencePrecision("fp32", False, None, f"half=True has no fast 16-bit path on {device.type}: float32")
    if bf16_supported is None:
        bf16_supported = cpu_bf16_supported()
    if bf16_supported:
        return InferencePrecision("bf16", False, torch.bfloat16, "bfloat16 autocast on the CPU (boxes and NMS in float32)")
    return InferencePrecision(
        "fp32", False, None,
        "half=True: this CPU has no bf16 arithmetic (no avx512_bf16/amx_bf16 in lscpu) and float16 convolutions "
        "are slow on CPUs, so the model runs in float32",
    )  # fmt: skip


def log_precision(precision: InferencePrecision, half: bool) -> None:
    """One line where half=True did not give a 16-bit network (the CPU has no bf16)."""
    if half and precision.name == "fp32":
        LOGGER.warning(f"WARNING: {precision.note}")


def precision_for(model: nn.Module, half: bool, device: torch.device) -> InferencePrecision:
    """What `half` means for `model` on `device` (resolve_precision), logged where it gives no 16-bit
    network; an exported model is told (ONNX/TorchScript: the file's precision, a note where half=True
    cannot apply; OpenVINO: its bf16 hint)."""
    exported = isinstance(model, ExportedModel)
    precision = resolve_precision(half, device, exported=exported)
    log_precision(precision, half)
    if exported:
        model.select_precision(half)
    return precision


@contextlib.contextmanager
def evaluating(model: nn.Module, precision: InferencePrecision) -> Iterator[torch.dtype]:
    """Within: `model` in eval mode with its weights as `precision` needs; yields the dtype to give
    the inputs. Its training mode and float32 weights are back on the way out."""
    was_training = model.training
    model.eval()
    try:
        with prepared(model, precision) as input_dtype:
            yield input_dtype
    finally:
        model.train(was_training)


@contextlib.contextmanager
def prepared(model: nn.Module, precision: InferencePrecision) -> Iterator[torch.dtype]:
    """Within: `model`'s weights as `precision` needs; yields the dtype to give the inputs.
    Float32 weights are restored on the way out."""
    if precision.half_weights:
        model.half()
    try:
        yield torch.float16 if precision.half_weights else torch.float32
    finally:
        if precision.half_weights:
            model.float()


def forward(model: nn.Module, images: torch.Tensor, precision: InferencePrecision) -> DenseOutputs:
    """model(images (B, 3, H, W)) under `precision`'s autocast, every output cast to float32."""
    with torch.autocast("cpu", dtype=precision.autocast or torch.bfloat16, enabled=precision.autocast is not None):
        outputs = model(images)
    return float32_outputs(outputs)


def float32_outputs(outputs: DenseOutputs) -> DenseOutputs:
    """Every tensor of `outputs` in float32 (scoring, NMS and box mapping run in float32)."""
    return DenseOutputs(*(t.float() if t.is_floating_point() else t for t in outputs))
