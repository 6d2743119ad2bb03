"""Static int8 quantisation of an exported ONNX graph (onnxruntime.quantization), calibrated on images of a dataset.

`export(format='onnx', int8=True, data=...)`: the float32 graph is written first, then
rewritten with QuantizeLinear/DequantizeLinear pairs (QDQ format) around its convolutions:
weights int8 per output channel (symmetric), activations uint8 per tensor with ranges from
MinMax calibration on `CALIBRATION_IMAGES` images of the data's train split, preprocessed as
predict/val preprocess them. onnxruntime fuses each QDQ pattern into an int8 convolution
(VNNI / AMX-INT8 where the CPU has them). Only Conv nodes are quantised: the box decoding, the
score sqrt(sigmoid(cls) * sigmoid(iou)) and NMS stay float32.

The three prediction convolutions of the head (cls_logits, bbox_pred, iou_pred) are kept in
float32 by default (`HEAD_LAYERS`): their outputs are the logits and distances themselves, so
an int8 step there is an error in every score and box, while the towers before them average
their rounding out. The metadata's `int8` entry records what was done.
"""

import os

import numpy as np

from ..utils.log import LOGGER, colorstr

__all__ = ["CALIBRATION_IMAGES", "HEAD_LAYERS", "calibration_batches", "quantize_onnx", "write_metadata"]

CALIBRATION_IMAGES = 32  # images of the train split the activation ranges are measured on
HEAD_LAYERS = ("head.cls_logits.", "head.bbox_pred.", "head.iou_pred.")  # kept float32


def calibration_batches(data: str, *, imgsz: int, max_size: int, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """`count` images of `data`'s train split as (1, 3, H, W) float32 arrays, preprocessed as val does."""
    from ..datasets.data_yaml import load_data
    from ..datasets.loader import build_dataloader

    spec = load_data(data)
    loader = build_dataloader(spec, "train", imgsz=imgsz, max_size=max_size, batch=1, workers=0, shuffle=False, seed=0)
    batches = []
    for batch in loader:
        batches.append(batch.images.numpy().astype(np.float32))
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"export int8=True: {data} has no train images to calibrate on; pass data= with images")
    return batches


def _head_convs(model) -> list[str]:
    """Names of the Conv nodes whose weight is one of HEAD_LAYERS (one per FPN level each)."""
    return [n.name for n in model.graph.node if n.op_type == "Conv" and any(k in n.input[1] for k in HEAD_LAYERS)]


def quantize_onnx(fp32_file: str | os.PathLike, int8_file: str | os.PathLike, batches: list[np.ndarray], *, head_fp32: bool = True) -> dict:
    """Write the int8 QDQ version of `fp32_file` to `int8_file`; returns the metadata entry
    {format, weights, activations, calibration_images, float32_nodes}. The ONNX metadata of
    `fp32_file` is carried over (with the entry added under 'int8' by the caller)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.items = iter([{name: b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    model = onnx.load(str(fp32_file))
    excluded = _head_convs(model) if head_fp32 else []
    LOGGER.info(f"{colorstr('int8:')} calibrating on {len(batches)} images, {len(excluded)} head convolutions kept float32 ...")
    quantize_static(
        str(fp32_file), str(int8_file), Reader(model.graph.input[0].name), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )  # fmt: skip
    return {
        "format": "QDQ",
        "weights": "int8 per channel, symmetric",
        "activations": "uint8 per tensor, MinMax calibration",
        "calibration_images": len(batches),
        "head_float32": bool(head_fp32),
        "float32_layers": [k.rstrip(".") for k in HEAD_LAYERS] if head_fp32 else [],
    }


def write_metadata(file: str | os.PathLike, metadata: dict) -> None:
    """Replace the ONNX metadata_props of `file` with `metadata` (JSON-encoded values)."""
    import json

    import onnx

    proto = onnx.load(str(file))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.save(proto, str(file))
