"""Exported models (.onnx through onnxruntime, .torchscript through torch.jit, an OpenVINO IR
folder through OpenVINO: engine/openvino_ir.py) presented as the network.

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

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..datasets.loader import SIZE_DIVISIBLE, padded_side
from ..models.detector import DenseOutputs
from ..utils.log import LOGGER
from .exporter import FORMATS, NMSSettings, load_torchscript, read_metadata

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "checked_metadata", "is_exported", "load_exported"]

EXPORTED_SUFFIXES = (FORMATS["onnx"], FORMATS["torchscript"])  # single-file exports; OpenVINO writes a folder


def _typed(file: Path, metadata: dict, key: str, kinds: tuple, default, check=lambda v: True, rule: str = ""):
    """metadata[key] (or `default`), or a ValueError naming the file, key, value and what it must be."""
    value = metadata.get(key, default)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds) or not check(value):
        raise ValueError(
            f"{file}: metadata '{key}' = {value!r} is not {rule or ' or '.join(k.__name__ for k in kinds)}; "
            "the file was not written by otadet's exporter or was edited — re-export it with `otadet export`"
        )
    return value


def checked_metadata(file: Path, metadata: dict) -> dict:
    """The metadata an exported file carries, each key type- and range-checked (a crafted or edited
    file fails here naming the key, not deep inside inference): names, strides, imgsz, dynamic,
    half, nms, stride_multiple."""
    if "names" not in metadata:
        raise ValueError(f"{file}: no otadet metadata (names) inside; export it with `otadet export` or Detector.export()")
    names = _typed(file, metadata, "names", (list, dict), None, lambda v: 0 < len(v) <= 100_000, "a non-empty list of class names")
    if isinstance(names, dict):  # {index: name}, as JSON keys are strings
        if sorted(map(str, names)) != sorted(str(i) for i in range(len(names))):
            raise ValueError(f"{file}: metadata 'names' has keys {sorted(names)[:5]}...; they must be 0..{len(names) - 1}")
        names = [names[k] for k in sorted(names, key=int)]
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{file}: metadata 'names' holds {[n for n in names if not isinstance(n, str)][:3]}; class names are strings")
    positive = lambda v: 0 < v <= 1 << 20  # noqa: E731
    strides = _typed(file, metadata, "strides", (list,), [], lambda v: all(isinstance(s, int) and positive(s) for s in v),
                     "a list of positive integers")  # fmt: skip
    args = _typed(file, metadata, "export_args", (dict,), {})
    nms = _typed(file, metadata, "nms", (dict, type(None)), None, rule="an object {conf, iou, max_det, pre_nms_topk}")
    if nms:
        fields = {"conf": (float, int), "iou": (float, int), "max_det": (int,), "pre_nms_topk": (int,)}
        unknown = set(nms) - set(fields)
        if unknown or not {"conf", "iou", "max_det"} <= set(nms):
            raise ValueError(f"{file}: metadata 'nms' = {nms!r} must have the keys conf, iou, max_det (and pre_nms_topk)")
        for key, kinds in fields.items():
            if key in nms:
                check = (lambda v: 0 <= v <= 1) if key in ("conf", "iou") else (lambda v: v > 0)
                _typed(file, nms, key, kinds, None, check, "in [0, 1]" if key in ("conf", "iou") else "a positive integer")
        nms = NMSSettings(**nms)
    return {
        "names": list(names),
        "strides": tuple(strides),
        "imgsz": _typed(file, metadata, "imgsz", (int,), 640, positive, "a positive integer"),
        "stride_multiple": _typed(file, metadata, "stride_multiple", (int,), SIZE_DIVISIBLE, positive, "a positive integer"),
        "dynamic": _typed(file, args, "dynamic", (bool,), True),
        "half": _typed(file, args, "half", (bool,), False),
        "nms": nms,
    }


class ExportedModel(nn.Module):
    """An otadet export loaded for inference: model(images (B, 3, H, W)) -> DenseOutputs.

    Args:
        file: an .onnx or .torchscript file written by otadet's exporter (metadata inside).
        threads: onnxruntime intra-op threads (None = onnxruntime's default).
    Attributes: metadata (dict), names, num_classes, strides, imgsz, dynamic, half, nms
    (NMSSettings or None), format ('onnx' | 'torchscript'; 'openvino' in the subclass
    engine/openvino_ir.py:OpenVINOModel, which shares this forward).
    """

    def __init__(self, file: str | os.PathLike, *, threads: int | None = None):
        super().__init__()
        self.threads = threads
        self.device = torch.device("cpu")
        self.file, metadata_source, metadata = self._open(Path(file))  # the file's own loading: sets self.format
        meta = checked_metadata(metadata_source, metadata)
        self.metadata = metadata
        self.names = meta["names"]
        self.num_classes = len(self.names)
        self.strides = meta["strides"]
        self.imgsz = meta["imgsz"]
        self.dynamic = meta["dynamic"]
        self.half = meta["half"]
        self.nms = meta["nms"]
        self.static_size = padded_side(self.imgsz, meta["stride_multiple"])  # the fixed input side when not dynamic
        self._start()
        self._check_output_width()

    def _open(self, file: Path) -> tuple[Path, Path, dict]:
        """(the model's path, the file its metadata came from, the metadata); loads a TorchScript module."""
        if file.suffix not in EXPORTED_SUFFIXES:
            raise ValueError(f"{file}: an exported model ends in {' or '.join(EXPORTED_SUFFIXES)}")
        if not file.is_file():
            raise FileNotFoundError(f"exported model {file} does not exist")
        self.format = "onnx" if file.suffix == ".onnx" else "torchscript"
        if self.format == "torchscript":
            self.module, metadata = load_torchscript(file)
        else:
            self.session = None
            metadata = read_metadata(file)
        return file, file, metadata

    def _start(self) -> None:
        if self.format == "onnx":
            self._start_session()

    def select_precision(self, half: bool) -> None:
        """Set before predict/val: what half=True means for this file. An ONNX or TorchScript file
        runs in the precision it was exported in (OpenVINOModel chooses at run time)."""
        if half and not self.half:
            LOGGER.warning(f"WARNING: half=True ignored: {self.file} was exported in FP32 (export it with half=True)")

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

    def _output_width(self) -> int | str | None:
        """The graph's output0 columns as the file states them (None where it does not)."""
        return self.session.get_outputs()[0].shape[-1] if self.format == "onnx" else None

    def _check_output_width(self) -> None:
        """The graph's output0 must have 4 + C columns (6 with embedded NMS) for the metadata's C names."""
        width = self._output_width()
        expected = 6 if self.nms is not None else 4 + self.num_classes
        if isinstance(width, int) and width != expected:
            raise ValueError(
                f"{self.file}: its output has {width} columns but its metadata ({self.num_classes} names"
                f"{', embedded NMS' if self.nms else ''}) means {expected}; re-export it with `otadet export`"
            )

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


def is_exported(model: str | os.PathLike) -> bool:
    """Whether `model` names an exported file: .onnx, .torchscript, or an OpenVINO IR (its folder or .xml)."""
    from .openvino_ir import is_openvino

    return Path(model).suffix.lower() in EXPORTED_SUFFIXES or is_openvino(model)


def load_exported(model: str | os.PathLike, *, threads: int | None = None) -> ExportedModel:
    """The backend for an exported file: OpenVINOModel for an IR folder or .xml, else ExportedModel."""
    from .openvino_ir import OpenVINOModel, is_openvino

    return OpenVINOModel(model, threads=threads) if is_openvino(model) else ExportedModel(model, threads=threads)
