"""Export of the assigner-free inference graph to ONNX or TorchScript, with metadata (OpenVINO:
the ONNX graph converted, engine/openvino_ir.py).

The graph is `InferenceGraph`: images (B, 3, H, W) normalised ->
- without NMS: output0 (B, A, 4 + C), the decoded xyxy boxes in input pixels followed by the
  OTA scores sqrt(sigmoid(cls) * sigmoid(iou)) (postprocess.dense_scores). A runtime
  thresholds, runs NMS and divides boxes by the resize scale, as the predictor does.
- with NMS (`nms=...`): output0 (B, max_det, 6) = x1 y1 x2 y2 score class, by descending
  score, padded with rows of zeros (postprocess.padded_nms); conf, iou and max_det are baked
  in. Boxes are clipped to the input tensor (H, W), padding included.

Metadata (names, strides, imgsz, stride_multiple, model, otadet_version, date, export_args,
nms) is stored JSON-encoded: as ONNX metadata_props, and as the extra file `otadet.json` of a
TorchScript archive (an OpenVINO folder: its metadata.yaml). `read_metadata` decodes any of them.

Exporter choice (torch 2.14): ONNX through the torch.export-based exporter (`dynamo=True`,
torch's default since 2.9, onnxscript); the legacy TorchScript-based ONNX exporter works too
but is deprecated. The dynamo exporter implements opset >= 18 and converts down for a lower
`opset` (17 converts cleanly for both graphs). TorchScript through torch.jit.trace: the
traced graph keeps the size arithmetic, so one trace serves every batch and input size.
Shapes: B=batch, A=anchor points over all levels, C=classes.
"""

import json
import os
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..datasets.loader import SIZE_DIVISIBLE, padded_side
from ..models.dcn import check_onnx_opset
from ..postprocess import dense_scores, padded_nms
from ..utils.log import LOGGER, colorstr

__all__ = [
    "FORMATS", "NMSSettings", "InferenceGraph", "export_onnx", "export_torchscript", "read_metadata", "read_onnx_metadata",
    "check_export_args", "check_half_device",
]  # fmt: skip

# format -> what follows the stem: best.pt exports best.onnx, best.torchscript, best_openvino_model/ (Ultralytics' names)
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": "_openvino_model"}
TORCHSCRIPT_METADATA = "otadet.json"  # the extra file of a TorchScript archive holding the metadata
OPENVINO_KEEPS_FP32 = (
    "export format=openvino keeps float32 weights and chooses the precision at run time: export with half=False "
    "and predict/val with half=True (bf16 on a CPU with bf16)"
)


def check_export_args(format: str, *, half: bool, int8: bool, nms: bool, simplify: bool) -> None:
    """The export arguments that do not go together, checked before any work."""
    if int8 and (format not in ("onnx", "openvino") or half or nms):
        raise ValueError("export int8=True applies to format=onnx or openvino without half and nms (NMS runs after the int8 graph)")
    if format not in FORMATS:
        raise ValueError(f"export format={format!r} is not supported; use format=onnx, torchscript or openvino")
    if simplify and format != "onnx":
        raise ValueError("export simplify=True applies to format=onnx only")
    if half and format == "openvino":
        raise ValueError(OPENVINO_KEEPS_FP32)


def check_half_device(device: torch.device) -> None:
    """An FP16 export traces a float16 model, which needs CUDA."""
    if device.type != "cuda":
        raise ValueError(
            "export half=True needs a CUDA device (FP16 convolutions are not implemented on the CPU): "
            "pass device=0, or export in FP32 with half=False"
        )


class NMSSettings(NamedTuple):
    """What an embedded NMS bakes into the graph."""

    conf: float  # keep scores > conf
    iou: float  # class-aware NMS IoU threshold
    max_det: int  # rows of the output per image
    pre_nms_topk: int = 1000  # (anchor, class) candidates per image before NMS


class InferenceGraph(nn.Module):
    """images (B, 3, H, W) -> output0: (B, A, 4 + C) boxes xyxy ++ scores, or with `nms`
    (B, max_det, 6) x1 y1 x2 y2 score class padded with zeros."""

    def __init__(self, detector: nn.Module, *, nms: NMSSettings | None = None):
        super().__init__()
        self.detector = detector
        self.nms = nms

    def forward(self, images: Tensor) -> Tensor:
        outputs = self.detector(images)
        scores = dense_scores(outputs.cls_logits, outputs.iou_logits)  # (B, A, C)
        if self.nms is None:
            return torch.cat((outputs.boxes, scores), dim=-1)  # (B, A, 4 + C)
        # (h, w) as a tensor computed from the input, so that both the ONNX and the TorchScript
        # graph follow the input size (a Python int from images.shape would be a constant in a trace).
        image_size = torch.stack(
            (torch.ones_like(images[0, 0, :, 0]).sum(), torch.ones_like(images[0, 0, 0, :]).sum())
        )  # (2,)
        s = self.nms
        return padded_nms(
            outputs.boxes, scores, image_size, conf=s.conf, iou=s.iou, max_det=s.max_det, pre_nms_topk=s.pre_nms_topk
        )  # (B, max_det, 6)


def _prepare(model: nn.Module, file: Path, suffix: str, imgsz: int, metadata: dict, extra: dict, half: bool) -> dict:
    """Check the arguments and return the full metadata (derived keys filled in, JSON-checked)."""
    from .. import __version__

    if file.suffix != suffix:
        raise ValueError(f"export: file {file} should end in {suffix}")
    names = metadata.get("names")
    num_classes = getattr(model, "num_classes", None)
    if names is None or (num_classes is not None and len(names) != num_classes):
        raise ValueError(f"export: metadata['names'] must list the model's {num_classes} class names, got {names!r}")
    if half:
        check_half_device(next(model.parameters()).device)
    derived = {
        "strides": list(getattr(model, "strides", ())),
        "imgsz": int(imgsz),
        "stride_multiple": SIZE_DIVISIBLE,
        "otadet_version": __version__,
        "date": datetime.now().isoformat(timespec="seconds"),
        **extra,
    }
    metadata = {**derived, **metadata}
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except TypeError as e:
            raise TypeError(f"export: metadata['{key}'] = {value!r} is not JSON-serialisable ({e})") from e
    return metadata


def _example(model: nn.Module, imgsz: int, dynamic: bool, half: bool) -> Tensor:
    """The input traced: batch 2 and >= 2 cells on P7 when dynamic (torch.export would make any
    size-1 axis the constant 1), else (1, 3, S, S) with S = imgsz rounded up to a multiple of 32."""
    size = padded_side(int(imgsz))
    if dynamic:
        size = max(size, 2 * max(getattr(model, "strides", (128,))))
    device = next(model.parameters()).device
    return torch.zeros(2 if dynamic else 1, 3, size, size, device=device, dtype=torch.float16 if half else torch.float32)


def _log_done(tag: str, file: Path, inputs: str, output: str, nms: NMSSettings | None, num_classes: int, elapsed: float) -> None:
    what = (
        f"x1 y1 x2 y2 score class, padded with score 0; conf {nms.conf}, iou {nms.iou}, max_det {nms.max_det} baked in"
        if nms
        else f"x1 y1 x2 y2 in input pixels + {num_classes} class scores; NMS not included"
    )
    LOGGER.info(f"{colorstr(tag)} input images {inputs} -> output0 {output} ({what})")
    size = sum(f.stat().st_size for f in file.iterdir()) if file.is_dir() else file.stat().st_size  # an OpenVINO folder: all of it
    LOGGER.info(f"{colorstr(tag)} export success {elapsed:.1f}s, saved as {file} ({size / 1e6:.1f} MB)")
    LOGGER.info(f"Predict:         otadet predict model={file} source=path/to/images")
    LOGGER.info(f"Validate:        otadet val model={file} data=your_data.yaml")


def _export_args(file: Path, imgsz: int, dynamic: bool, nms: NMSSettings | None, half: bool, **more) -> dict:
    return {
        "format": "onnx" if file.suffix == ".onnx" else "torchscript",
        "imgsz": int(imgsz),
        "dynamic": bool(dynamic),
        "nms": nms is not None,
        "half": bool(half),
        **more,
    }


def export_onnx(
    model: nn.Module,
    *,
    file: str | os.PathLike,
    imgsz: int,
    opset: int = 17,
    dynamic: bool = True,
    nms: NMSSettings | None = None,
    half: bool = False,
    simplify: bool = False,
    metadata: dict,
    log: bool = True,
) -> Path:
    """Write `model`'s InferenceGraph to `file` as ONNX and return the path.

    dynamic=True gives dynamic batch, height and width axes (output anchors follow); else the
    graph is fixed at (1, 3, S, S), S = imgsz rounded up to a multiple of 32. nms embeds NMS
    (output (B, max_det, 6)). half=True exports FP16 (CUDA model only). simplify=True runs
    onnxsim, which must be installed (the exporter already folds constants and removes dead
    code with onnxscript's optimizer). `metadata` (names, model, ...) is stored JSON-encoded in
    metadata_props; strides, imgsz, stride_multiple, otadet_version, date, export_args and nms
    are filled in when missing. The file is checked with onnx.checker. log=False leaves out the
    shapes, size and commands (export_openvino, which converts the file, logs its own).
    """
    import onnx

    file = Path(file)
    check_onnx_opset(model, opset)  # DCN (torchvision::deform_conv2d) needs opset >= 19
    onnxsim = _onnxsim() if simplify else None
    extra = {
        "export_args": _export_args(file, imgsz, dynamic, nms, half, opset=opset, simplify=simplify),
        "nms": nms._asdict() if nms else None,
    }
    metadata = _prepare(model, file, ".onnx", imgsz, metadata, extra, half)
    was_training = model.training
    graph = InferenceGraph(model, nms=nms).eval()  # puts `model` in eval mode too
    example = _example(model, imgsz, dynamic, half)
    dynamic_shapes = {"images": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    LOGGER.info(f"{colorstr('ONNX:')} exporting with torch {torch.__version__}, onnx {onnx.__version__}, opset {opset}...")
    start = time.perf_counter()
    try:
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=opset, input_names=["images"], output_names=["output0"],
            dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
        )  # fmt: skip
    finally:
        model.train(was_training)
    if dynamic and nms is None:
        # The anchor count is a long expression of height and width; give it a name.
        program.rename_axes({program.model.graph.outputs[0].shape[1]: "anchors"})
    proto = _write_onnx(program.model_proto, file, metadata, opset, onnxsim)
    elapsed = time.perf_counter() - start
    if log:
        _log_done("ONNX:", file, _shape(proto.graph.input[0]), _shape(proto.graph.output[0]), nms, len(metadata["names"]), elapsed)
    return file


def _onnxsim():
    try:
        import onnxsim
    except ImportError:
        raise ValueError(
            "export simplify=True needs onnxsim, which is not installed: `pip install onnxsim`, or leave "
            "simplify=False (the exporter already folds constants and removes dead nodes)"
        ) from None
    return onnxsim


def _write_onnx(proto, file: Path, metadata: dict, opset: int, onnxsim=None):
    """Simplify (with onnxsim, if given), store the metadata, save, check; returns the proto written."""
    import onnx

    if onnxsim is not None:
        proto, ok = onnxsim.simplify(proto)
        if not ok:
            raise RuntimeError("export: onnxsim could not validate the simplified model; export with simplify=False")
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    file.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(file))
    onnx.checker.check_model(str(file))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        LOGGER.warning(f"WARNING: ONNX: opset {opset} was asked for but the file has opset {written} (conversion not possible)")
    return proto


def export_torchscript(
    model: nn.Module,
    *,
    file: str | os.PathLike,
    imgsz: int,
    dynamic: bool = True,
    nms: NMSSettings | None = None,
    half: bool = False,
    metadata: dict,
) -> Path:
    """Write `model`'s InferenceGraph to `file` as a traced TorchScript archive; same outputs as ONNX.

    The metadata (as export_onnx) is the archive's extra file 'otadet.json'. The trace follows
    any batch and input size whatever `dynamic` says; dynamic=False only records the size.
    """
    file = Path(file)
    extra = {"export_args": _export_args(file, imgsz, dynamic, nms, half), "nms": nms._asdict() if nms else None}
    metadata = _prepare(model, file, ".torchscript", imgsz, metadata, extra, half)
    was_training = model.training
    graph = InferenceGraph(model, nms=nms).eval()  # puts `model` in eval mode too
    example = _example(model, imgsz, dynamic, half)
    LOGGER.info(f"{colorstr('TorchScript:')} tracing with torch {torch.__version__}...")
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings flag Python values taken from shapes; the parity tests at several
            # sizes and batches are what shows the trace follows them.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(graph, example, check_trace=False)
            output = traced(example)
    finally:
        model.train(was_training)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(file), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    elapsed = time.perf_counter() - start
    inputs = "(batch, 3, height, width)" if dynamic else str(tuple(example.shape))
    outputs = f"(batch, {'max_det' if nms else 'anchors'}, {output.shape[-1]})"
    _log_done("TorchScript:", file, inputs, outputs, nms, len(metadata["names"]), elapsed)
    return file


def _shape(value_info) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + ")"


def load_torchscript(file: Path) -> tuple[torch.jit.ScriptModule, dict]:
    """(module on the CPU in eval mode, its otadet metadata) of a .torchscript file."""
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra).eval()
    except RuntimeError as e:
        raise ValueError(f"{file} is not a TorchScript archive torch can load ({str(e).splitlines()[0]}); re-export it") from e
    if not extra[TORCHSCRIPT_METADATA]:
        raise ValueError(f"{file}: no {TORCHSCRIPT_METADATA} inside; was it exported by otadet (format=torchscript)?")
    try:
        return module, json.loads(extra[TORCHSCRIPT_METADATA])
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: its {TORCHSCRIPT_METADATA} is not JSON ({e}); re-export it") from e


def read_metadata(file: str | os.PathLike) -> dict:
    """The metadata of an otadet .onnx or .torchscript file, JSON-decoded (names, strides, imgsz, ...),
    or of an OpenVINO IR folder (or its .xml): its metadata.yaml."""
    from .openvino_ir import is_openvino, read_ir_metadata

    file = Path(file)
    if is_openvino(file):
        return read_ir_metadata(file)[2]
    if not file.is_file():
        raise FileNotFoundError(f"exported model {file} does not exist")
    if file.suffix == ".torchscript":
        return load_torchscript(file)[1]
    import onnx

    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise ValueError(f"{file} is not an ONNX model onnx can parse ({type(e).__name__}: {e}); re-export it") from e
    out = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{file}: metadata '{prop.key}' is not JSON ({prop.value!r}); was it exported by otadet.engine.exporter?"
            ) from e
    return out


read_onnx_metadata = read_metadata  # the name of earlier versions
