"""half=True on every device (engine/precision.py) and amp=True on the CPU, against float32 eager.

bf16 keeps 8 significant bits: each rounding moves a value by at most 2^-9 of itself (0.2 %),
and through the ~20 layers of ota_tiny errors add up roughly as a random walk. Measured on the
built-in val images below: boxes (up to ~400 px) move by at most ~2 px (mean 0.04 px), scores
by at most 0.004. The tolerances are ~2x those: boxes 1 % of the input's longer side, scores
0.01. A score that moves by 0.01 can swap two near-equal detections, so detections are compared
by matching (same class, corners within the box tolerance) rather than row by row.
"""

import logging

import cv2
import numpy as np
import pytest
import torch

from otadet.datasets.loader import collate
from otadet.datasets.transforms import build_transforms
from otadet.engine.model import Detector
from otadet.engine.precision import forward, resolve_precision
from otadet.postprocess import dense_scores
from otadet.utils.log import LOGGER
from otadet.utils.torch_utils import cpu_bf16_supported, resolve_amp

from tiny_run import TINY_RUN, perturbed_detector, shapes_val_split

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no avx512_bf16/amx_bf16")


@pytest.fixture(scope="module")
def val_data(tmp_path_factory, write_data_yaml):
    """A 4-image split of the built-in shapes data: (data YAML, val image files)."""
    return shapes_val_split(tmp_path_factory.mktemp("precision_shapes"), write_data_yaml, 4)


@pytest.fixture(scope="module")
def detector():
    return perturbed_detector()


def _images(files, imgsz=256, max_size=352) -> torch.Tensor:
    transform = build_transforms(False, imgsz, max_size)
    samples = []
    for f in files:
        tensor, _, scale = transform(cv2.imread(str(f)), np.zeros((0, 4), np.float32))
        samples.append((tensor, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 0,
                                 "orig_size": (1, 1), "scale": scale, "path": str(f)}))  # fmt: skip
    return collate(samples).images


def test_what_half_means_on_each_device():
    assert resolve_precision(False, CPU, bf16_supported=True).name == "fp32"
    bf16 = resolve_precision(True, CPU, bf16_supported=True)
    assert bf16.name == "bf16" and bf16.autocast == torch.bfloat16 and not bf16.half_weights
    none = resolve_precision(True, CPU, bf16_supported=False)
    assert none.name == "fp32" and none.autocast is None and "no bf16" in none.note
    fp16 = resolve_precision(True, torch.device("cuda:0"))  # no CUDA call is made
    assert fp16.name == "fp16" and fp16.half_weights and fp16.autocast is None
    assert resolve_precision(True, CPU, exported=True).name == "file"


def test_amp_on_the_cpu_is_bf16_autocast_where_the_cpu_has_it():
    on = resolve_amp(True, CPU, bf16_supported=True)
    assert on.enabled and on.dtype == torch.bfloat16 and not on.scaler and "bfloat16" in on.note
    off = resolve_amp(True, CPU, bf16_supported=False)
    assert not off.enabled and off.dtype == torch.float32 and "no effect" in off.note


@needs_bf16
def test_bf16_forward_agrees_with_float32(detector, val_data):
    _, files = val_data
    images = _images(files)  # (4, 3, 256, 352)
    net = detector.net
    convs = []
    hook = net.head.cls_logits.register_forward_hook(lambda m, i, o: convs.append(o.dtype))
    with torch.no_grad():
        ref = forward(net, images, resolve_precision(False, CPU))
        got = forward(net, images, resolve_precision(True, CPU))
    hook.remove()
    assert convs == [torch.float32] * 5 + [torch.bfloat16] * 5, "the bf16 run did not run its convolutions in bf16"
    assert all(t.dtype == torch.float32 for t in got[:3]), "outputs leave forward() in float32"
    assert ref.boxes.amax() > 100 and np.ptp(dense_scores(ref.cls_logits, ref.iou_logits).numpy()) > 0.1
    box_err = (got.boxes - ref.boxes).abs()
    assert box_err.max() <= 0.01 * 352 and box_err.mean() < 0.2, box_err.max()
    score_err = (dense_scores(got.cls_logits, got.iou_logits) - dense_scores(ref.cls_logits, ref.iou_logits)).abs()
    assert score_err.max() <= 0.01, score_err.max()


@needs_bf16
def test_predict_and_val_half_on_the_cpu(detector, val_data):
    data, files = val_data
    kw = dict(conf=0.1, iou=0.6, device="cpu", imgsz=256, max_size=352)
    ref = detector.predict(files, **kw)
    got = detector.predict(files, half=True, **kw)
    matched = total = 0
    for a, b in zip(ref, got):
        scale = max(a.orig_shape) / 352  # original pixels per input pixel
        a, b = a.boxes.data, b.boxes.data  # (N, 6)
        assert abs(len(a) - len(b)) <= max(2, len(a) // 10)
        if len(a) and len(b):  # the same class, every corner within the box tolerance (in original pixels)
            corners = (a[:, None, :4] - b[None, :, :4]).abs().amax(-1) <= 0.01 * 352 * scale
            matched += int((corners & (a[:, 5, None] == b[None, :, 5])).any(1).sum())
        total += len(a)
    assert total > 10 and matched >= 0.9 * total, (matched, total)
    assert next(detector.net.parameters()).dtype == torch.float32
    common = dict(data=str(data), device="cpu", imgsz=256, max_size=352, batch=2, workers=0, verbose=False, save_json=False)
    fp32 = detector.val(**common)
    bf16 = detector.val(half=True, **common)
    assert bf16["images"] == fp32["images"] == 4
    assert abs(bf16["AP50"] - fp32["AP50"]) <= 0.02 and abs(bf16["AP"] - fp32["AP"]) <= 0.02, (fp32["AP"], bf16["AP"])


def test_half_without_bf16_runs_float32_and_says_so(detector, val_data, monkeypatch):
    import otadet.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        _, files = val_data
        kw = dict(conf=0.1, device="cpu", imgsz=256, max_size=352)
        got, ref = detector.predict(files[:1], half=True, **kw), detector.predict(files[:1], **kw)
    finally:
        LOGGER.removeHandler(handler)
    assert torch.equal(got[0].boxes.data, ref[0].boxes.data)
    assert sum("no bf16 arithmetic" in m for m in messages) == 1


@needs_bf16
def test_training_with_amp_on_the_cpu(train_data, tmp_path):
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        metrics = Detector("ota_tiny.yaml", verbose=False).train(
            data=str(train_data), project=str(tmp_path), name="amp", amp=True, iters=2, **TINY_RUN
        )
    finally:
        LOGGER.removeHandler(handler)
    assert any("bfloat16 autocast on the CPU" in m for m in messages)
    assert list(tmp_path.rglob("amp/weights/best.pt")) and "AP" in metrics


def test_int8_onnx_agrees_with_float32_and_validates(detector, val_data, tmp_path):
    """Static int8 (QDQ, per-channel weights, head convolutions float32) against float32 eager.

    int8 activations have 256 levels over each tensor's calibrated range, a step of ~1/100 of
    the range, and per-channel weights ~1/250 of each channel's range; through ~17 quantised
    layers the score error of a random model measured here is ~0.01-0.02 at most. Tolerance:
    scores within 0.05 at the 99th percentile, boxes within 5 % of the input's longer side."""
    from otadet.engine.backend import ExportedModel
    from otadet.engine.exporter import read_metadata

    data, files = val_data
    file = detector.export(format="onnx", int8=True, data=str(data), imgsz=256, max_size=352, project=str(tmp_path))
    meta = read_metadata(file)
    assert file.name.endswith("_int8.onnx") and meta["int8"]["head_float32"] and meta["export_args"]["int8"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images = _images(files)
    with torch.no_grad():
        ref = detector.net(images)
    ref_out = torch.cat((ref.boxes, dense_scores(ref.cls_logits, ref.iou_logits)), -1)
    got = ExportedModel(file).run(images)
    assert got.shape == ref_out.shape
    score_err = (got[..., 4:] - ref_out[..., 4:]).abs().flatten()
    assert score_err.quantile(0.99) <= 0.05, score_err.quantile(0.99)
    assert (got[..., :4] - ref_out[..., :4]).abs().flatten().quantile(0.99) <= 0.05 * 352
    common = dict(data=str(data), device="cpu", batch=2, workers=0, verbose=False, save_json=False)
    fp32 = detector.val(imgsz=256, max_size=352, **common)
    int8 = Detector(file, verbose=False).val(**common)
    assert int8["images"] == 4 and abs(int8["AP50"] - fp32["AP50"]) <= 0.05, (fp32["AP50"], int8["AP50"])
