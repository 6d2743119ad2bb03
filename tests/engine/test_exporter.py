"""Export and exported models: onnxruntime and TorchScript against PyTorch on the built-in val images.

Raw outputs (boxes ++ scores) agree within 1e-4, and after NMS the detections are the same
(IoU > 0.99, same classes, scores within 1e-4), with and without NMS inside the graph, at two
input sizes through one dynamic graph. Detector('x.onnx') predicts and validates like the
PyTorch Detector. The exports are made once per module (they take seconds each on 2 cores).
"""

import importlib.util
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import box_iou

from otadet import __version__
from otadet.datasets.loader import collate
from otadet.datasets.shapes import SHAPES_CLASSES, generate_shapes
from otadet.datasets.transforms import build_transforms
from otadet.engine.backend import ExportedModel
from otadet.engine.exporter import InferenceGraph, NMSSettings, export_onnx, read_metadata
from otadet.engine.model import Detector
from otadet.models.build import build_detector
from otadet.postprocess import dense_scores, nms, padded_nms
from otadet.utils.log import LOGGER

NAMES = list(SHAPES_CLASSES)
SIZES = (256, 320)  # two input sizes through the same dynamic graph
BAKED = NMSSettings(conf=0.14, iou=0.6, max_det=100)


@pytest.fixture(scope="module")
def val_data(tmp_path_factory, write_data_yaml):
    """A 6-image split of the built-in shapes data: (data YAML, val image files)."""
    tmp = tmp_path_factory.mktemp("export_shapes")
    root = generate_shapes(tmp / "shapes", seed=5, num_train=1, num_val=6)
    return write_data_yaml(tmp / "shapes.yaml", path=root, names=NAMES), sorted((root / "images" / "val").glob("*.jpg"))


@pytest.fixture(scope="module")
def detector() -> Detector:
    """ota_tiny with random weights, deterministically perturbed so boxes and scores vary."""
    torch.manual_seed(0)
    det = Detector("ota_tiny.yaml", verbose=False)
    det.names = NAMES
    det.net = build_detector(det.cfg, len(NAMES))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in det.net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
        # Box sides mostly positive (~16 px): with random weights the ReLU'd distances are often 0.
        det.net.head.bbox_pred.weight.mul_(0.1)
        det.net.head.bbox_pred.bias.add_(1.0)
    det.net.eval()
    return det


@pytest.fixture(scope="module")
def exports(detector, tmp_path_factory) -> dict:
    """Each kind of export, once, through Detector.export (dynamic axes); 'logs' holds what they logged."""
    project = str(tmp_path_factory.mktemp("exports"))
    common = dict(project=project, imgsz=256, conf=BAKED.conf, iou=BAKED.iou, max_det=BAKED.max_det)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        return {
            "onnx": detector.export(format="onnx", name="raw", **common),
            "onnx_nms": detector.export(format="onnx", nms=True, name="nms", **common),
            "torchscript": detector.export(format="torchscript", name="raw", **common),
            "torchscript_nms": detector.export(format="torchscript", nms=True, name="nms", **common),
            "logs": messages,
        }
    finally:
        LOGGER.removeHandler(handler)


@pytest.fixture(scope="module")
def pytorch_results(detector, val_data) -> dict:
    """The PyTorch Detector's predictions on 3 val images at each input size."""
    _, files = val_data
    kw = dict(conf=BAKED.conf, iou=BAKED.iou, max_det=BAKED.max_det, device="cpu")
    return {imgsz: detector.predict(files[:3], imgsz=imgsz, **kw) for imgsz in SIZES}


def _inputs(files, imgsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as predict/val feed them: resized, normalised, padded to a batch; and (B, 2) sizes."""
    transform = build_transforms(False, imgsz, 2 * imgsz)
    samples = []
    for f in files:
        tensor, _, scale = transform(cv2.imread(str(f)), np.zeros((0, 4), np.float32))
        samples.append((tensor, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 0,
                                 "orig_size": (1, 1), "scale": scale, "path": str(f)}))  # fmt: skip
    sizes = torch.tensor([tuple(t.shape[1:]) for t, _ in samples], dtype=torch.float32)
    return collate(samples).images, sizes


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_raw_outputs_match_torch(detector, exports, val_data, kind):
    model = ExportedModel(exports[kind])
    _, files = val_data
    for imgsz, batch in zip(SIZES, (files[:2], files[2:5])):
        images, _ = _inputs(batch, imgsz)
        with torch.no_grad():
            outputs = detector.net(images)
        # The reference is built from the model's parts, not from the exported wrapper.
        reference = torch.cat((outputs.boxes, dense_scores(outputs.cls_logits, outputs.iou_logits)), -1).numpy()
        exported = model.run(images).numpy()
        assert exported.shape == reference.shape == (len(batch), outputs.points.shape[0], 4 + len(NAMES))
        assert np.ptp(reference[..., 4:]) > 0.1 and np.ptp(reference[..., :4]) > 100, "outputs are not trivial"
        # Scores in [0, 1]: 1e-4 absolute. Boxes are up to ~400 px, so 1e-4 is relative there
        # (onnxruntime sums the convolutions in another order: ~3e-5 px observed).
        np.testing.assert_allclose(exported[..., 4:], reference[..., 4:], rtol=0, atol=1e-4)
        np.testing.assert_allclose(exported[..., :4], reference[..., :4], rtol=1e-4, atol=1e-4)


def _assert_same_detections(got, expected):
    """Same detections up to the order of near-equal scores: a one-to-one match of each row with
    a row of the same class, IoU > 0.99 and score within 1e-4."""
    assert len(got) == len(expected) > 0
    # A random model predicts some zero-area boxes, whose IoU is undefined: few here (see detector).
    proper = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert proper.float().mean() > 0.9
    iou = box_iou(got[:, :4], expected[:, :4])  # (N, N)
    same_class = got[:, 5, None] == expected[None, :, 5]
    close_score = (got[:, 4, None] - expected[None, :, 4]).abs() < 1e-4
    corners = (got[:, None, :4] - expected[None, :, :4]).abs().amax(-1) < 1e-3  # for zero-area boxes
    match = same_class & close_score & ((iou > 0.99) | (corners & ~proper[None, :]))
    taken = set()
    for i in range(len(got)):
        candidates = [j for j in match[i].nonzero().flatten().tolist() if j not in taken]
        assert candidates, f"row {i} {got[i].tolist()} has no match"
        taken.add(candidates[0])


@pytest.mark.parametrize("kind", ["onnx", "onnx_nms", "torchscript", "torchscript_nms"])
def test_detections_match_pytorch(exports, pytorch_results, val_data, kind):
    """Detector('x.onnx'|'x.torchscript').predict == the PyTorch Detector's, image by image."""
    _, files = val_data
    exported = Detector(exports[kind], verbose=False)
    assert exported.names == NAMES, "names come from the metadata"
    assert (exported.net.nms is not None) == kind.endswith("nms")
    for imgsz in SIZES:
        got = exported.predict(files[:3], imgsz=imgsz, conf=BAKED.conf, iou=BAKED.iou, max_det=BAKED.max_det, device="cpu")
        for r_got, r_exp in zip(got, pytorch_results[imgsz], strict=True):
            assert r_got.path == r_exp.path and r_got.orig_shape == r_exp.orig_shape
            assert len(r_exp) < BAKED.max_det, "not cut at max_det, where near-equal scores could swap"
            _assert_same_detections(r_got.boxes.data, r_exp.boxes.data)


def test_embedded_nms_is_padded_and_batched(detector, exports, val_data):
    """output0 (B, max_det, 6): each image's rows are PyTorch's nms of that image (clipped to the
    input tensor), by descending score, then zero rows."""
    _, files = val_data
    session = ort.InferenceSession(str(exports["onnx_nms"]), providers=["CPUExecutionProvider"])
    images, _ = _inputs(files[:3], 288)
    (output,) = session.run(["output0"], {"images": images.numpy()})
    assert output.shape == (3, BAKED.max_det, 6)
    with torch.no_grad():
        outputs = detector.net(images)
    scores = dense_scores(outputs.cls_logits, outputs.iou_logits)
    h, w = images.shape[-2:]
    reference = nms(outputs.boxes, scores, conf=BAKED.conf, iou=BAKED.iou, max_det=BAKED.max_det,
                    image_sizes=torch.tensor([[h, w]] * 3, dtype=torch.float32))  # fmt: skip
    for rows, expected in zip(torch.from_numpy(output), reference):
        n = len(expected)
        assert 0 < n and (rows[:n, 4] > 0).all() and (rows[n:] == 0).all(), "kept rows first, zero padding after"
        _assert_same_detections(rows[:n], expected)
    # The eager form of the embedded NMS agrees with the loop over images too.
    padded = padded_nms(outputs.boxes, scores, torch.tensor([h, w]), conf=BAKED.conf, iou=BAKED.iou, max_det=BAKED.max_det)
    for rows, expected in zip(padded, reference):
        assert torch.allclose(rows[: len(expected)], expected, atol=1e-5) and (rows[len(expected) :] == 0).all()


def _readme_postprocess():
    """The numpy post-processing function as the README prints it (its ```python block)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "def postprocess(" in block]
    namespace = {}
    exec(code, namespace)
    return namespace["postprocess"]


def test_readme_numpy_postprocess_gives_otadets_detections(exports, val_data):
    """The README's numpy post-processing on the raw ONNX output == otadet's nms on the same output
    (without its top-1000 cut and clipping, which the README states), rescaled by `scale`."""
    postprocess = _readme_postprocess()
    _, files = val_data
    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    images, _ = _inputs(files[:3], 288)
    (output,) = session.run(["output0"], {"images": images.numpy()})
    out = torch.from_numpy(output)
    scale, settings = 0.75, dict(conf=BAKED.conf, iou=BAKED.iou, max_det=300)
    reference = nms(out[..., :4], out[..., 4:], pre_nms_topk=out.shape[1] * len(NAMES), **settings)
    for image_output, expected in zip(output, reference, strict=True):
        got = torch.from_numpy(postprocess(image_output, scale, **settings)).float()
        assert 0 < len(expected) < settings["max_det"], "not cut at max_det, where near-equal scores could swap"
        expected[:, :4] /= scale
        _assert_same_detections(got, expected)


def test_graph_checked_named_and_metadata(detector, exports):
    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    for kind, out_dims in (("onnx", ["batch", "anchors", 4 + len(NAMES)]), ("onnx_nms", ["batch", BAKED.max_det, 6])):
        onnx.checker.check_model(str(exports[kind]))
        proto = onnx.load(str(exports[kind]))
        assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["output0"]
        assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
        assert dims(proto.graph.output[0]) == out_dims
        assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    meta = read_metadata(exports["onnx_nms"])
    assert meta.pop("date")
    assert meta == {
        "names": NAMES,
        "strides": [8, 16, 32, 64, 128],
        "imgsz": 256,
        "max_size": 352,
        "stride_multiple": 32,
        "model": "ota_tiny",
        "otadet_version": __version__,
        "export_args": {"format": "onnx", "imgsz": 256, "dynamic": True, "nms": True, "half": False, "opset": 17,
                        "simplify": False},  # fmt: skip
        "nms": {"conf": BAKED.conf, "iou": BAKED.iou, "max_det": BAKED.max_det, "pre_nms_topk": 1000},
    }
    ts_meta = read_metadata(exports["torchscript_nms"])
    assert ts_meta["export_args"] == {"format": "torchscript", "imgsz": 256, "dynamic": True, "nms": True, "half": False}
    assert {k: v for k, v in ts_meta.items() if k not in ("date", "export_args")} == {k: v for k, v in meta.items() if k != "export_args"}
    assert read_metadata(exports["onnx"])["nms"] is None
    assert not detector.net.training, "export leaves the mode as it found it (eval here)"


def test_static_export_pads_smaller_inputs(detector, tmp_path):
    """dynamic=False: a (1, 3, 320, 320) graph; ExportedModel zero-pads smaller inputs (as collate
    does) and runs a batch image by image; a larger input fails with the fix."""
    net = detector.net
    net.train()
    file = export_onnx(net, file=tmp_path / "static.onnx", imgsz=300, dynamic=False, nms=BAKED, metadata={"names": NAMES})
    assert net.training, "export restores the training mode"
    net.eval()
    proto = onnx.load(str(file))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 320, 320]
    model = ExportedModel(file)
    images = torch.randn(2, 3, 256, 288, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (0, 32, 0, 64))
    with torch.no_grad():
        reference = InferenceGraph(net, nms=BAKED)(padded)
    output = model.run(images)
    assert output.shape == (2, BAKED.max_det, 6)
    assert (output[..., 4] > 0).sum() > 0
    assert torch.allclose(output, reference, atol=1e-3)
    with pytest.raises(ValueError, match="dynamic=False"):
        model.run(torch.zeros(1, 3, 352, 320))


def test_val_through_onnx(detector, exports, val_data, tmp_path):
    data, _ = val_data
    kw = dict(data=str(data), imgsz=256, max_size=352, batch=3, workers=0, project=str(tmp_path), verbose=False)
    expected = detector.val(**kw)
    got = Detector(exports["onnx"], verbose=False).val(**kw)
    assert got["images"] == expected["images"] == 6
    assert expected["AR100"] > 0, "the random model finds something, so the comparison means something"
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert got[key] == pytest.approx(expected[key], abs=1e-4), key


def test_export_logs_what_a_user_needs(exports):
    text = "\n".join(exports["logs"])
    assert "input images (batch, 3, height, width) -> output0 (batch, anchors, 8)" in text
    assert "input images (batch, 3, height, width) -> output0 (batch, 100, 6) (x1 y1 x2 y2 score class" in text
    for kind in ("onnx", "torchscript_nms"):
        file = exports[kind]
        assert f"saved as {file} (" in text and f"otadet predict model={file} source=" in text
    assert text.count("export success") == 4 and " MB)" in text


def test_errors(detector, exports, tmp_path):
    exported = Detector(exports["onnx"], verbose=False)
    with pytest.raises(ValueError, match=r"exported onnx file.*\.pt checkpoint"):
        exported.train(epochs=1)
    with pytest.raises(ValueError, match="exported onnx file"):
        exported.export(format="onnx")
    with pytest.raises(ValueError, match="half=True needs a CUDA device"):
        detector.export(format="onnx", half=True, device="cpu", project=str(tmp_path))
    with pytest.raises(ValueError, match="format=onnx, torchscript or openvino"):
        detector.export(format="tflite", project=str(tmp_path))
    if importlib.util.find_spec("onnxsim") is None:  # not a dependency: simplify=True says how to get it
        with pytest.raises(ValueError, match="onnxsim"):
            detector.export(format="onnx", simplify=True, project=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Detector(tmp_path / "missing.onnx")
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(exports["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="no otadet metadata"):
        Detector(bare)
