"""torchvision's own FCOS (random weights, nothing downloaded) against the converted otadet model:
the same input tensor gives the same dense class scores, boxes and centerness (1e-4); after
post-processing at torchvision's thresholds (score 0.2, NMS 0.6, 100 per image) the same
detections on built-in val images (IoU > 0.99, same class, score within 1e-4); the exported
ONNX graph of the converted model agrees with it; a missing weights file names file, URL, folder."""

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights, fcos_resnet50_fpn
from torchvision.ops import box_iou

from otadet import Detector
from otadet.convert import convert
from otadet.convert.torchvision_fcos import coco_rows
from otadet.datasets.shapes import generate_shapes
from otadet.datasets.transforms import to_tensor_normalized
from otadet.postprocess import dense_scores, nms

CATEGORIES = list(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
ROWS, NAMES = coco_rows(CATEGORIES)
# h, w: multiples of 128, so torchvision's transform neither resizes nor pads, and its anchor
# generator's strides (padded size // feature size) are the nominal ones on every level; at a size
# that is not a multiple of 128 torchvision's P6/P7 points sit elsewhere (e.g. stride 80 for P7 at w=160).
SIZE = (128, 256)
BOX_ATOL = 5e-4  # px (see test_dense_outputs_match_torchvision)
SCORE, NMS_IOU, DETS = 0.2, 0.6, 100  # torchvision FCOS's defaults


@pytest.fixture(scope="module")
def torchvision_fcos():
    """torchvision's FCOS at SIZE with random weights made to fire: 3 classes near the threshold,
    the 11 unused rows (background, N/A) far below it, sizeable boxes, varied centerness."""
    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=SIZE[0], max_size=1333)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            elif t.is_floating_point() and not name.endswith("num_batches_tracked"):
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
        cls = model.head.classification_head.cls_logits.bias
        cls.fill_(-8.0)
        cls[[ROWS[0], ROWS[17], ROWS[56]]] = -2.6  # person, dog, chair
        model.head.regression_head.bbox_reg.bias.copy_(torch.tensor([1.5, 1.0, 2.5, 2.0]))
    return model.eval()


@pytest.fixture(scope="module")
def converted(torchvision_fcos, tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "fcos_resnet50_fpn_coco-99b0c9b7.pth"
    torch.save(torchvision_fcos.state_dict(), path)
    return Detector("torchvision:fcos_resnet50_fpn", weights=path, verbose=False), path


@pytest.fixture(scope="module")
def val_images(tmp_path_factory):
    """Built-in shapes val images, all of SIZE."""
    root = generate_shapes(tmp_path_factory.mktemp("tvdata") / "s", seed=3, num_train=0, num_val=3,
                           width=[SIZE[1], SIZE[1]], height=[SIZE[0], SIZE[0]])  # fmt: skip
    return [cv2.imread(str(p)) for p in sorted((root / "images" / "val").glob("*.jpg"))]


def _torchvision_dense(model, image_rgb01: torch.Tensor):
    """torchvision's own pieces: transform -> backbone -> head -> anchors -> BoxLinearCoder.decode."""
    images, _ = model.transform([image_rgb01])
    features = list(model.backbone(images.tensors).values())
    head = model.head(features)
    anchors = model.anchor_generator(images, features)[0]
    boxes = model.box_coder.decode(head["bbox_regression"][0], anchors)  # (A, 4)
    return images.tensors, head["cls_logits"][0], boxes, head["bbox_ctrness"][0, :, 0]


def test_dense_outputs_match_torchvision(torchvision_fcos, converted, val_images):
    detector, _ = converted
    assert detector.names == NAMES and len(NAMES) == 80 and detector.cfg.head.quality == "centerness"
    rgb = torch.from_numpy(val_images[0][:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        tensor, cls, boxes, ctrness = _torchvision_dense(torchvision_fcos, rgb)
        # otadet's pipeline normalisation is torchvision's: the same tensor from the uint8 image
        assert torch.allclose(to_tensor_normalized(val_images[0])[None], tensor, atol=1e-5)
        out = detector.net.eval()(tensor)
    assert out.cls_logits.shape == (1, cls.shape[0], 80)
    assert torch.allclose(out.cls_logits[0], cls[:, ROWS], atol=1e-4, rtol=0)
    # Box corners are point -/+ distances of up to ~500 px, where a float32 ulp is 3e-5 px, and the
    # two decodings order their operations differently: 5e-4 px is a few ulps of those distances.
    assert torch.allclose(out.boxes[0], boxes, atol=BOX_ATOL, rtol=0)
    assert torch.allclose(out.iou_logits[0], ctrness, atol=1e-4, rtol=0)
    assert boxes[:, 2:].sub(boxes[:, :2]).min() > 0  # the check compares real boxes


def _otadet_detections(detector, tensor: torch.Tensor) -> torch.Tensor:
    out = detector.net(tensor)
    sizes = torch.tensor([tensor.shape[-2:]])
    return nms(out.boxes, dense_scores(out.cls_logits, out.iou_logits), conf=SCORE, iou=NMS_IOU, max_det=DETS,
               pre_nms_topk=1000, image_sizes=sizes)[0]  # fmt: skip


def _assert_same_detections(ours: torch.Tensor, theirs: dict) -> None:
    assert len(ours) == len(theirs["boxes"])
    labels = torch.tensor(ROWS)[ours[:, 5].long()]  # otadet's 80 contiguous labels -> torchvision's category ids
    iou = box_iou(theirs["boxes"], ours[:, :4])  # (N_tv, N_ours)
    same = (theirs["labels"][:, None] == labels[None]) & ((theirs["scores"][:, None] - ours[None, :, 4]).abs() < 1e-4)
    best = (iou * same).max(dim=1)
    assert (best.values > 0.99).all(), best.values.min()


def test_detections_match_torchvision(torchvision_fcos, converted, val_images):
    detector, _ = converted
    counts = []
    with torch.no_grad():
        for image in val_images:
            rgb = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
            theirs = torchvision_fcos([rgb])[0]
            ours = _otadet_detections(detector, to_tensor_normalized(image)[None])
            _assert_same_detections(ours, theirs)
            counts.append(len(ours))
    assert all(5 <= c <= DETS for c in counts), counts  # the comparison has detections to compare


def test_onnx_export_of_converted_model(converted, val_images, tmp_path):
    detector, path = converted
    detector.source = str(tmp_path / "fcos.pt")  # export next to it
    file = detector.export(format="onnx", imgsz=SIZE[0], max_size=SIZE[1], dynamic=True)
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    tensor = to_tensor_normalized(val_images[1])[None]
    with torch.no_grad():
        out = detector.net(tensor)
    raw = session.run(None, {session.get_inputs()[0].name: tensor.numpy()})[0]  # (1, A, 4 + C)
    expected = torch.cat((out.boxes, dense_scores(out.cls_logits, out.iou_logits)), dim=-1)
    np.testing.assert_allclose(raw[..., :4], expected[..., :4].numpy(), atol=BOX_ATOL, rtol=0)  # px, as above
    np.testing.assert_allclose(raw[..., 4:], expected[..., 4:].numpy(), atol=1e-4, rtol=0)


def test_converted_checkpoint_round_trip(converted, tmp_path):
    detector, path = converted
    from otadet.convert import save_converted

    file = save_converted(convert("torchvision:fcos_resnet50_fpn", weights=path), tmp_path / "fcos.pt")
    again = Detector(str(file), verbose=False)
    assert again.names == NAMES and again.cfg.head.point_offset == 0.0 and not again.cfg.head.level_scales
    for key, value in detector.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[key]), key


def test_missing_weights_name_file_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        Detector("torchvision:fcos_resnet50_fpn", verbose=False)
    message = str(info.value)
    assert "\n" not in message
    for part in ("fcos_resnet50_fpn_coco-99b0c9b7.pth", FCOS_ResNet50_FPN_Weights.COCO_V1.url, str(tmp_path / "hub" / "checkpoints")):
        assert part in message
