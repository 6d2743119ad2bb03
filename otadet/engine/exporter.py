"""ONNX export of the assigner-free inference graph: images -> boxes and scores, NMS outside.

The graph is `InferenceGraph`: images (B, 3, H, W) normalised -> output0 (B, A, 4 + C), the
decoded xyxy boxes in input pixels followed by the OTA scores sqrt(sigmoid(cls) * sigmoid(iou))
(postprocess.dense_scores). A runtime thresholds, runs NMS and divides boxes by the resize
scale, as the predictor does. Metadata (names, strides, imgsz, ...) is stored as ONNX
metadata_props, every value JSON-encoded; `read_onnx_metadata` decodes it.

Exporter choice (torch 2.14): the torch.export-based exporter (`dynamo=True`, torch's default
since 2.9, onnxscript). The legacy TorchScript exporter (`dynamo=False`) also exports this
model with dynamic batch/height/width and matches torch as closely, but it warns that it is
deprecated and will be removed. The dynamo exporter implements opset >= 18 and converts down
for a lower `opset` (17 converts cleanly for this graph).
Shapes: B=batch, A=anchor points over all levels, C=classes.
"""

import json
import os
import time
from datetime import datetime
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from ..models.dcn import check_onnx_opset
from ..postprocess import dense_scores
from ..utils.log import LOGGER, colorstr

__all__ = ["InferenceGraph", "export_onnx", "read_onnx_metadata"]

STRIDE_MULTIPLE = 32  # inputs are zero-padded to a multiple of this (loader.collate)


class InferenceGraph(nn.Module):
    """The exported graph: images (B, 3, H, W) -> output0 (B, A, 4 + C) = boxes xyxy ++ scores."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        outputs = self.detector(images)
        scores = dense_scores(outputs.cls_logits, outputs.iou_logits)  # (B, A, C)
        return torch.cat((outputs.boxes, scores), dim=-1)  # (B, A, 4 + C)


def _shape(value_info: onnx.ValueInfoProto) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + ")"


def export_onnx(
    model: nn.Module,
    *,
    file: str | os.PathLike,
    imgsz: int,
    opset: int = 17,
    dynamic: bool = True,
    metadata: dict,
) -> Path:
    """Write `model`'s InferenceGraph to `file` as ONNX and return the path.

    dynamic=True gives dynamic batch, height and width axes (output anchors follow); else the
    graph is fixed at (1, 3, imgsz', imgsz') with imgsz' = imgsz rounded up to a multiple of 32.
    `metadata` (names, strides, imgsz, stride_multiple, model, otadet_version, date, ...) is
    stored JSON-encoded in metadata_props; strides, imgsz, stride_multiple, otadet_version and
    date are filled in when missing. The file is checked with onnx.checker.
    """
    from .. import __version__

    file = Path(file)
    if file.suffix != ".onnx":
        raise ValueError(f"export_onnx: file {file} should end in .onnx")
    names = metadata.get("names")
    num_classes = getattr(model, "num_classes", None)
    if names is None or (num_classes is not None and len(names) != num_classes):
        raise ValueError(
            f"export_onnx: metadata['names'] must list the model's {num_classes} class names, got {names!r}"
        )
    check_onnx_opset(model, opset)  # DCN (torchvision::deform_conv2d) needs opset >= 19
    size = -(-int(imgsz) // STRIDE_MULTIPLE) * STRIDE_MULTIPLE
    derived = {
        "strides": list(getattr(model, "strides", ())),
        "imgsz": int(imgsz),
        "stride_multiple": STRIDE_MULTIPLE,
        "otadet_version": __version__,
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    metadata = {**derived, **metadata}
    encoded = {}
    for key, value in metadata.items():
        try:
            encoded[str(key)] = json.dumps(value)
        except TypeError as e:
            raise TypeError(f"export_onnx: metadata['{key}'] = {value!r} is not JSON-serialisable ({e})") from e

    was_training = model.training
    model.eval()
    graph = InferenceGraph(model).eval()
    device = next(model.parameters()).device
    # A dynamic export traces batch 2 and at least 2 cells on P7 (256 px): torch.export would
    # specialise any size-1 axis to the constant 1 and the graph would fail on other sizes.
    example_size = max(size, 2 * max(getattr(model, "strides", (128,)))) if dynamic else size
    example = torch.zeros(2 if dynamic else 1, 3, example_size, example_size, device=device)
    dynamic_shapes = {"images": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    LOGGER.info(f"{colorstr('ONNX:')} exporting with torch {torch.__version__}, onnx {onnx.__version__}, opset {opset}...")
    start = time.perf_counter()
    try:
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["output0"],
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    if dynamic:
        # The anchor count is a long expression of height and width; give it a name.
        program.rename_axes({program.model.graph.outputs[0].shape[1]: "anchors"})
    proto = program.model_proto
    onnx.helper.set_model_props(proto, encoded)
    file.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(file))
    onnx.checker.check_model(str(file))
    elapsed = time.perf_counter() - start
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        LOGGER.warning(f"WARNING: ONNX: opset {opset} was asked for but the file has opset {written} (conversion not possible)")

    LOGGER.info(
        f"{colorstr('ONNX:')} input images {_shape(proto.graph.input[0])} -> output0 {_shape(proto.graph.output[0])} "
        f"(x1 y1 x2 y2 in input pixels + {len(names)} class scores; NMS not included)"
    )
    LOGGER.info(f"{colorstr('ONNX:')} export success {elapsed:.1f}s, saved as {file} ({file.stat().st_size / 1e6:.1f} MB)")
    LOGGER.info(f"Predict:         otadet predict model={file}")
    return file


def read_onnx_metadata(file: str | os.PathLike) -> dict:
    """The metadata_props of an otadet ONNX file, JSON-decoded (names, strides, imgsz, ...)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"ONNX file {file} does not exist")
    proto = onnx.load(str(file), load_external_data=False)
    out = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{file}: metadata '{prop.key}' is not JSON ({prop.value!r}); was it exported by otadet.engine.exporter?"
            ) from e
    return out
