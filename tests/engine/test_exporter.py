"""ONNX export: onnxruntime matches torch at two input sizes and batch 2, metadata round-trips,
onnx.checker passes, and the axes are named."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from otadet.config import load_model_config
from otadet.engine.exporter import InferenceGraph, export_onnx, read_onnx_metadata
from otadet.models.build import build_detector
from otadet.postprocess import dense_scores

NAMES = ["circle", "rectangle", "triangle", "cross"]


@pytest.fixture(scope="module")
def model():
    """ota_tiny with random weights, deterministically perturbed so boxes and scores vary."""
    torch.manual_seed(0)
    net = build_detector(load_model_config("ota_tiny"), len(NAMES))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    metadata = {"names": NAMES, "model": "ota_tiny", "date": "2024-01-01T00:00:00"}
    file = export_onnx(model, file=tmp_path_factory.mktemp("export") / "ota_tiny.onnx", imgsz=320, metadata=metadata)
    return file, metadata


def test_onnxruntime_matches_torch(model, exported):
    file, _ = exported
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(2)
    for shape in ((1, 3, 320, 320), (2, 3, 256, 384)):
        images = torch.randn(shape, generator=generator)
        with torch.no_grad():
            outputs = model(images)
        # The reference is built from the model's parts, not from the exported wrapper.
        reference = torch.cat((outputs.boxes, dense_scores(outputs.cls_logits, outputs.iou_logits)), -1).numpy()
        (onnx_out,) = session.run(["output0"], {"images": images.numpy()})
        assert onnx_out.shape == reference.shape == (shape[0], outputs.points.shape[0], 4 + len(NAMES))
        assert np.ptp(reference[..., 4:]) > 0.1 and np.ptp(reference[..., :4]) > 100, "outputs are not trivial"
        # Scores in [0, 1]: float32 round-off only. Boxes are hundreds of pixels, built from
        # regression distances up to stride 128 x the conv sums, which onnxruntime adds in
        # another order: ~2e-4 px observed, so 1e-3 px (3e-6 of the image) is the bound.
        score_diff = np.abs(onnx_out[..., 4:] - reference[..., 4:]).max()
        box_diff = np.abs(onnx_out[..., :4] - reference[..., :4]).max()
        assert score_diff < 1e-5, score_diff
        assert box_diff < 1e-3, box_diff


def test_graph_checked_named_and_metadata(model, exported):
    file, metadata = exported
    onnx.checker.check_model(str(file))
    proto = onnx.load(str(file))

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["output0"]
    assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(proto.graph.output[0]) == ["batch", "anchors", 4 + len(NAMES)]
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    from otadet import __version__

    assert read_onnx_metadata(file) == {
        **metadata,
        "strides": [8, 16, 32, 64, 128],
        "imgsz": 320,
        "stride_multiple": 32,
        "otadet_version": __version__,
    }
    assert not model.training, "export leaves the mode as it found it (eval here)"


def test_static_export_and_errors(model, tmp_path):
    model.train()
    file = export_onnx(model, file=tmp_path / "static.onnx", imgsz=300, dynamic=False, metadata={"names": NAMES})
    assert model.training, "export restores the training mode"
    model.eval()
    proto = onnx.load(str(file))
    input_dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert input_dims == [1, 3, 320, 320]  # imgsz rounded up to a multiple of 32
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = InferenceGraph(model)(images).numpy()
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    assert np.abs(onnx_out - reference).max() < 1e-3
    with pytest.raises(ValueError, match="4 class names"):
        export_onnx(model, file=tmp_path / "bad.onnx", imgsz=320, metadata={"names": ["a"]})
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(model, file=tmp_path / "bad.pt", imgsz=320, metadata={"names": NAMES})
