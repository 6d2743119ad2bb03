"""OTA on the anchor-based (RetinaNet-form) detector: the box coder against torchvision's,
the network's decoding, and train -> val -> export through the same Detector."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from otadet import Detector
from otadet.assign import ota
from otadet.config import ConfigError, load_model_config, model_config_from_dict
from otadet.criterion import build_criterion
from otadet.models.box_coder import DELTA_CLAMP, anchor_boxes, decode_deltas, encode_deltas
from otadet.models.build import build_detector
from otadet.models.detector import anchor_points

TORCHVISION = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(1000.0 / 16))


def random_boxes(gen, n, scale=300.0):
    xy = torch.rand(n, 2, generator=gen) * scale
    wh = torch.exp(torch.empty(n, 2).uniform_(2.0, 6.0, generator=gen))  # ratios < e^4 < 1000/16: no clamp
    return torch.cat((xy, xy + wh), 1)


def test_box_coder_matches_torchvision():
    gen = torch.Generator().manual_seed(0)
    anchors, boxes = random_boxes(gen, 500), random_boxes(gen, 500)
    deltas = encode_deltas(boxes, anchors)
    torch.testing.assert_close(deltas, TORCHVISION.encode_single(boxes, anchors))
    torch.testing.assert_close(decode_deltas(deltas, anchors), boxes, rtol=1e-5, atol=1e-3)
    # Arbitrary deltas, some past the clamp: both coders agree, including the clamp.
    deltas = torch.randn(500, 4, generator=gen) * 2.0
    deltas[:20, 2:] = 9.0
    torch.testing.assert_close(decode_deltas(deltas, anchors), TORCHVISION.decode_single(deltas, anchors))
    assert DELTA_CLAMP == pytest.approx(math.log(1000 / 16))
    # Batched (B, A, 4) deltas decode per anchor as the 2-D form does; half precision decodes in float32.
    batched = torch.stack((deltas, deltas.flip(0)))
    out = decode_deltas(batched.half(), anchors)
    assert out.dtype == torch.float32
    torch.testing.assert_close(decode_deltas(batched, anchors)[1], TORCHVISION.decode_single(deltas.flip(0), anchors))


def test_retina_network_decodes_deltas_from_anchors_centred_on_the_points():
    cfg = load_model_config("ota_retina_tiny.yaml")
    assert (cfg.head.box_coder, cfg.head.anchor_scale) == ("delta", 8.0)
    model = build_detector(cfg, num_classes=3).eval()
    assert model.head.reg_activation == "none"
    torch.nn.init.normal_(model.head.bbox_pred.weight, std=0.2)  # deltas far from zero
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = model(images)
        features = list(model.fpn(model.backbone(images)).values())
        _, deltas, _ = model.head(features, model.strides)
    points, strides = anchor_points(features, model.strides)
    anchors = anchor_boxes(points, strides, 8.0)
    torch.testing.assert_close((anchors[:, :2] + anchors[:, 2:]) / 2, points)  # the points are the anchor centres
    torch.testing.assert_close(anchors[:, 2] - anchors[:, 0], 8.0 * strides)
    for i in range(2):
        torch.testing.assert_close(out.boxes[i], TORCHVISION.decode_single(deltas[i], anchors))
    # Zero deltas give the anchors themselves: what the network predicts before training.
    torch.nn.init.zeros_(model.head.bbox_pred.weight)
    torch.nn.init.zeros_(model.head.bbox_pred.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(images).boxes[0], anchors)


def test_retina_shares_the_ota_assigner_and_validates_its_keys():
    cfg = load_model_config("ota_retina_r50.yaml")
    r50 = load_model_config("ota_r50.yaml")
    assert build_criterion(cfg, 80).assigner.func is ota
    assert cfg.assigner == r50.assigner and cfg.loss == r50.loss and cfg.backbone == r50.backbone
    with pytest.raises(ConfigError, match=r"head.box_coder: unknown key 'deltas' — did you mean 'delta'"):
        model_config_from_dict({"head": {"box_coder": "deltas"}})
    with pytest.raises(ConfigError, match="anchor_scale must be > 0"):
        model_config_from_dict({"head": {"box_coder": "delta", "anchor_scale": 0}})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, write_data_yaml):
    root = tmp_path_factory.mktemp("retina-data")
    return write_data_yaml(
        root / "tiny.yaml", path=root / "shapes-tiny", builtin="shapes", generate={"seed": 5, "num_train": 8, "num_val": 4}
    )


def test_retina_trains_validates_and_exports(tiny_data, tmp_path):
    model = Detector("ota_retina_tiny.yaml", verbose=False)
    metrics = model.train(
        data=str(tiny_data), epochs=3, imgsz=96, max_size=128, batch=4, workers=0, warmup_iters=1,
        optimizer="adamw", lr0=0.004, weight_decay=0.05, val=False, project=str(tmp_path),
    )  # fmt: skip
    run = tmp_path / "train" / "exp"
    rows = (run / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("loss/total")]) for r in rows[1:]]
    cls_losses = [float(r.split(",")[header.index("loss/cls")]) for r in rows[1:]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert cls_losses[2] < cls_losses[1] < cls_losses[0], cls_losses
    assert metrics["images"] == 4 and all(0.0 <= metrics[k] <= 1.0 for k in ("AP", "AP50"))  # the last epoch validates

    reloaded = Detector(run / "weights" / "best.pt", verbose=False)
    assert reloaded.cfg.head.box_coder == "delta" and reloaded.net.box_coder == "delta"
    onnx_file = reloaded.export(format="onnx", dynamic=False)  # a static graph exports ~3x faster
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        out = reloaded.net.eval()(images)
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_out[..., :4], out.boxes.numpy(), atol=1e-3, rtol=1e-5)
    scores = torch.sqrt(out.cls_logits.sigmoid() * out.iou_logits.sigmoid()[..., None])
    np.testing.assert_allclose(onnx_out[..., 4:], scores.numpy(), atol=1e-5)
