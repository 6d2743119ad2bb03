"""Exported models (.onnx through onnxruntime, .torchscript through torch.jit) presented as the network.

`ExportedModel(file)(images)` returns the `DenseOutputs` the PyTorch detector returns, so the
predictor and the validator run an exported file through exactly their PyTorch code:
dense_scores -> nms -> boxes back to original pixels. The exported scores are folded into
`cls_logits` with the IoU branch at certainty, the exact inverse of postprocess.dense_scores:

    cls_logits = logit(score ** 2), iou_logits = +inf  =>  sqrt(sigmoid(cls) * sigmoid(iou)) = score

A graph with embedded NMS gives max_det "anchors" per image, each with a logit for its own
class only (-inf elsewhere, and for the zero padding). Running NMS again on them keeps them:
the kept boxes of a class overlap by less than the baked iou. The graph does not carry the
anchor points: `points` and `strides` are empty.
Shapes: B=batch, A=anchor points (or max_det), C=classes.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..models.detector import DenseOutputs
from ..utils.log import LOGGER
from .exporter import FORMATS, TORCHSCRIPT_METADATA, NMSSettings, read_metadata

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel"]

EXPORTED_SUFFIXES = tuple(FORMATS.values())  # .onnx, .torchscript


class ExportedModel(nn.Module):
    """An otadet export loaded for inference: model(images (B, 3, H, W)) -> DenseOutputs.

    Args:
        file: an .onnx or .torchscript file written by otadet's exporter (metadata inside).
        threads: onnxruntime intra-op threads (None = onnxruntime's default).
    Attributes: metadata (dict), names, num_classes, strides, imgsz, dynamic, half, nms
    (NMSSettings or None), format ('onnx' | 'torchscript').
    """

    def __init__(self, file: str | os.PathLike, *, threads: int | None = None):
        super().__init__()
        file = Path(file)
        if file.suffix not in EXPORTED_SUFFIXES:
            raise ValueError(f"{file}: an exported model ends in {' or '.join(EXPORTED_SUFFIXES)}")
        if not file.is_file():
            raise FileNotFoundError(f"exported model {file} does not exist")
        self.file = file
        self.format = "onnx" if file.suffix == ".onnx" else "torchscript"
        self.threads = threads
        self.device = torch.device("cpu")
        if self.format == "torchscript":
            extra = {TORCHSCRIPT_METADATA: ""}
            self.module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra).eval()
            metadata = json.loads(extra[TORCHSCRIPT_METADATA]) if extra[TORCHSCRIPT_METADATA] else {}
        else:
            self.session = None
            metadata = read_metadata(file)
        if "names" not in metadata:
            raise ValueError(f"{file}: no otadet metadata (names) inside; export it with `otadet export` or Detector.export()")
        self.metadata = metadata
        self.names = list(metadata["names"].values()) if isinstance(metadata["names"], dict) else list(metadata["names"])
        self.num_classes = len(self.names)
        self.strides = tuple(metadata.get("strides", ()))
        self.imgsz = int(metadata.get("imgsz", 640))
        args = metadata.get("export_args", {})
        self.dynamic = bool(args.get("dynamic", True))
        self.half = bool(args.get("half", False))
        self.nms = NMSSettings(**metadata["nms"]) if metadata.get("nms") else None
        stride = int(metadata.get("stride_multiple", 32))
        self.static_size = -(-self.imgsz // stride) * stride  # the fixed input side when not dynamic
        if self.format == "onnx":
            self._start_session()

    # ------------------------------------------------------------------ device
    def _start_session(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
            else:
                LOGGER.warning(
                    f"WARNING: onnxruntime here has no CUDAExecutionProvider (only {', '.join(available)}): "
                    f"{self.file.name} runs on the CPU; install onnxruntime-gpu for CUDA"
                )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        self.session = ort.InferenceSession(str(self.file), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32
        self.providers = self.session.get_providers()

    def to(self, device: torch.device | str | None = None, *args, **kwargs) -> "ExportedModel":
        """Run on `device`: onnxruntime's CUDA provider for a CUDA device when present, else the CPU."""
        device = torch.device(device) if device is not None else self.device
        if self.half and device.type != "cuda":
            raise ValueError(f"{self.file} was exported with half=True (FP16) and runs on a CUDA device only: pass device=0")
        if device != self.device:
            self.device = device
            if self.format == "onnx":
                self._start_session()
            else:
                self.module.to(device)
        return self

    # ------------------------------------------------------------------ inference
    def _pad_static(self, images: Tensor) -> Tensor:
        """Zero-pad bottom/right to the fixed export size, as collate pads: boxes do not move."""
        h, w = images.shape[-2:]
        size = self.static_size
        if h > size or w > size:
            raise ValueError(
                f"{self.file} was exported with dynamic=False for {size}x{size} inputs; got {h}x{w}: predict/val with "
                f"imgsz<={size} max_size<={size}, or export with dynamic=True"
            )
        return nn.functional.pad(images, (0, size - w, 0, size - h))

    def run(self, images: Tensor) -> Tensor:
        """The file's own output0: (B, A, 4 + C) boxes ++ scores, or (B, max_det, 6) with embedded NMS."""
        if not self.dynamic:  # a fixed (1, 3, S, S) input: pad, one image at a time
            padded = self._pad_static(images)
            return torch.cat([self._run(padded[i : i + 1]) for i in range(padded.shape[0])])
        return self._run(images)

    @torch.no_grad()
    def _run(self, images: Tensor) -> Tensor:
        if self.format == "torchscript":
            return self.module(images.to(self.device, torch.float16 if self.half else torch.float32)).float()
        array = images.detach().cpu().numpy().astype(self.input_type, copy=False)
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output).float().to(images.device)

    def forward(self, images: Tensor) -> DenseOutputs:
        output = self.run(images)  # (B, A, 4 + C) or (B, max_det, 6)
        boxes = output[..., :4]
        if self.nms is None:
            scores = output[..., 4:]  # (B, A, C)
        else:
            labels = output[..., 5].long().clamp(0, self.num_classes - 1)  # (B, max_det); padding rows have score 0
            scores = torch.zeros(*output.shape[:2], self.num_classes, device=output.device)
            scores.scatter_(2, labels[..., None], output[..., 4:5])  # (B, max_det, C)
        cls_logits = torch.logit(scores.square())  # logit(0) = -inf: sigmoid gives 0 back
        iou_logits = torch.full(scores.shape[:2], float("inf"), device=output.device)  # sigmoid = 1
        empty = output.new_zeros(0)
        return DenseOutputs(cls_logits, boxes, iou_logits, empty.reshape(0, 2), empty)

    def extra_repr(self) -> str:
        return f"{self.file}, format={self.format}, classes={self.num_classes}, nms={self.nms is not None}"
