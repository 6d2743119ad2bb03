"""Test-time augmentation (engine/tta.py): boxes of every scaled and flipped pass come back to the
input frame (hand-computed for fake networks), the merge is flip-equivariant, and val/predict
with augment=True run end to end (an oracle network scores AP 1.0 through all 18 passes)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataloader
from otadet.datasets.shapes import generate_shapes
from otadet.engine.model import Detector
from otadet.engine.predictor import predict
from otadet.engine.tta import TTA_RATIOS, TTAPass, augmented_dense, resize_batch, tta_detect, tta_passes
from otadet.engine.validator import input_sizes, validate
from otadet.models.build import build_detector
from otadet.models.detector import DenseOutputs
from tiny_run import perturbed_tiny
from otadet.postprocess import dense_scores, nms

CPU = torch.device("cpu")
ALL = (0.0, math.inf)  # a pass without a size range


def _outputs(boxes: torch.Tensor, cls_logits: torch.Tensor, iou_logits: torch.Tensor) -> DenseOutputs:
    a = boxes.shape[1]
    return DenseOutputs(cls_logits, boxes, iou_logits, torch.zeros(a, 2), torch.full((a,), 8.0))


class ConstantBox(nn.Module):
    """Whatever the input: one anchor, box (10, 20, 32, 42) in input pixels, score ~1."""

    def forward(self, images):
        b = images.shape[0]
        boxes = torch.tensor([10.0, 20.0, 32.0, 42.0]).repeat(b, 1, 1)  # (B, 1, 4)
        return _outputs(boxes, torch.full((b, 1, 1), 20.0), torch.full((b, 1), 20.0))


class BrightSquare(nn.Module):
    """Finds the pixels of channel 0 above 0.5 (a bright square on a dark image): one box each."""

    def forward(self, images):
        boxes = []
        for image in images:
            ys, xs = (image[0] > 0.5).nonzero(as_tuple=True)
            boxes.append(torch.stack((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)).float())
        b = images.shape[0]
        return _outputs(torch.stack(boxes)[:, None], torch.full((b, 1, 1), 20.0), torch.full((b, 1), 20.0))


def _batch(sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, 3, H, W) noise images of these unpadded sizes, and the (B, 2) sizes."""
    generator = torch.Generator().manual_seed(0)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(sizes), 3, -(-h // 32) * 32, -(-w // 32) * 32)
    for k, (hk, wk) in enumerate(sizes):
        images[k, :, :hk, :wk] = torch.rand(3, hk, wk, generator=generator)
    return images, torch.tensor(sizes, dtype=torch.float64)


def test_passes_are_the_atss_scales_with_flips():
    passes = tta_passes()
    assert len(passes) == 18 and [p.ratio * 800 for p in passes[::2]] == [400, 500, 600, 700, 800, 900, 1000, 1100, 1200]
    assert [p.flip for p in passes[:4]] == [False, True, False, True]
    assert passes[0].size_range == (96, math.inf) and passes[-1].size_range == (0, 256)
    assert all(p.size_range == ALL for p in tta_passes(size_ranges=None)) and len(tta_passes(flip=False)) == 9


def test_constant_box_maps_back_from_every_pass():
    sizes = [(64, 96), (100, 128)]  # shorter sides 64 and 100: size ranges scaled by 0.08 and 0.125
    images, size_tensor = _batch(sizes)
    passes = tta_passes()
    boxes, scores = augmented_dense(ConstantBox(), images, size_tensor, passes=passes, topk=1)
    assert boxes.shape == (2, 18, 4) and scores.shape == (2, 18, 1)
    for k, (h, w) in enumerate(sizes):
        for j, p in enumerate(passes):
            nh, nw = round(h * p.ratio), round(w * p.ratio)  # the pass's input size
            x1, x2 = (nw - 32, nw - 10) if p.flip else (10, 32)  # the box, mirrored back in the pass frame
            expected = torch.tensor([x1 * w / nw, 20 * h / nh, x2 * w / nw, 42 * h / nh])
            torch.testing.assert_close(boxes[k, j], expected, rtol=0, atol=1e-4)
            # sqrt(area) 22 px in every pass; ATSS's ranges x shorter side / 800.
            lo, hi = (s * min(h, w) / 800 for s in p.size_range)
            assert (scores[k, j, 0] > 0.99) == (lo <= 22 <= hi), (k, p)
    # The 64-px image drops the box at 1100 and 1200 (max 256 x 0.08 = 20.5 < 22), keeps it elsewhere.
    assert (scores[0, :, 0] == 0).tolist() == [False] * 14 + [True] * 4
    assert (scores[1, :, 0] > 0.99).all()


def test_bright_square_is_found_in_the_input_frame():
    images = torch.zeros(1, 3, 96, 128)
    images[0, :, 30:60, 50:90] = 1.0  # x 50..90, y 30..60 of a 96 x 120 input (8 px of padding)
    sizes = torch.tensor([[96.0, 120.0]])
    passes = tta_passes(size_ranges=None)
    boxes, _ = augmented_dense(BrightSquare(), images, sizes, passes=passes, topk=1)
    square = torch.tensor([50.0, 30.0, 90.0, 60.0])
    for j, p in enumerate(passes):
        # Bilinear resizing moves the 0.5 crossing by up to half a pass pixel: 0.5 / ratio input pixels.
        assert (boxes[0, j] - square).abs().max() <= 0.5 / p.ratio + 1e-4, (p, boxes[0, j])
    (dets,) = tta_detect(BrightSquare(), images, sizes, conf=0.5, passes=passes)
    assert dets.shape == (1, 6) and (dets[0, :4] - square).abs().max() <= 1.0 and dets[0, 4] > 0.99


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return perturbed_tiny()


def _mirror(dets: torch.Tensor, width: float) -> torch.Tensor:
    return torch.cat((width - dets[:, 2:3], dets[:, 1:2], width - dets[:, 0:1], dets[:, 3:]), dim=1)


def _assert_same_detections(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.shape[0] > 10
    order_a, order_b = a[:, 4].argsort(descending=True), b[:, 4].argsort(descending=True)
    torch.testing.assert_close(a[order_a], b[order_b], rtol=0, atol=1e-3)


def test_the_identity_pass_is_the_plain_prediction(tiny):
    images, sizes = _batch([(96, 128), (80, 100)])
    with torch.no_grad():
        out = tiny(images)
    plain_a, plain_b = nms(out.boxes, dense_scores(out.cls_logits, out.iou_logits), conf=0.05, image_sizes=sizes.float())
    tta_a, tta_b = tta_detect(tiny, images, sizes, conf=0.05, passes=[TTAPass(1.0, False, ALL)])
    assert torch.equal(plain_a, tta_a) and torch.equal(plain_b, tta_b) and len(plain_a) > 10
    # Handing over the plain outputs (as val and predict do) saves that pass and changes nothing.
    calls = []
    hook = tiny.register_forward_hook(lambda *_: calls.append(1))
    given = tta_detect(tiny, images, sizes, conf=0.05, pre_nms_topk=100, plain=out)
    hook.remove()
    assert len(calls) == 17
    for a, b in zip(given, tta_detect(tiny, images, sizes, conf=0.05, pre_nms_topk=100)):
        assert torch.equal(a, b)


def test_symmetric_input_agrees_with_itself(tiny):
    generator = torch.Generator().manual_seed(3)
    half = torch.randn(1, 3, 128, 160, generator=generator)
    images = half + half.flip(-1)  # mirror-symmetric, exactly
    sizes = torch.tensor([[128.0, 160.0]])
    for ratio in (0.5, 1.0, 1.375):
        plain, flipped = (
            tta_detect(tiny, images, sizes, conf=0.05, passes=[TTAPass(ratio, flip, ALL)])[0] for flip in (False, True)
        )
        # The flipped pass sees the same image: its detections are the plain ones, mirrored.
        _assert_same_detections(_mirror(flipped, 160.0), plain)


def test_merge_is_flip_equivariant(tiny):
    # 18 passes closed under flipping: augmenting the mirrored image gives the mirrored detections.
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 96, 128, generator=generator)
    sizes = torch.tensor([[96.0, 128.0], [96.0, 128.0]])
    # pre_nms_topk 100 per pass keeps the NMS small (1800 candidates) for a random network.
    dets = tta_detect(tiny, images, sizes, conf=0.05, pre_nms_topk=100)
    mirrored = tta_detect(tiny, images.flip(-1), sizes, conf=0.05, pre_nms_topk=100)
    for d, m in zip(dets, mirrored):
        _assert_same_detections(_mirror(m, 128.0), d)


def test_resize_batch_keeps_each_image_and_pads():
    images, sizes = _batch([(64, 96), (100, 128)])
    out, new = resize_batch(images, sizes, 0.5)
    assert new.tolist() == [[32, 48], [50, 64]] and out.shape == (2, 3, 64, 64)
    assert (out[0, :, 32:] == 0).all() and (out[0, :, :, 48:] == 0).all()  # padding stays zero
    # The same as resizing the unpadded image alone.
    alone = torch.nn.functional.interpolate(images[1:, :, :100, :128], size=(50, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1:, :, :50, :64], alone)
    flipped, _ = resize_batch(images, sizes, 1.0, flip=True)
    assert torch.equal(flipped[0, :, :64, :96], images[0, :, :64, :96].flip(-1))


# ----------------------------------------------------------------------------- val and predict


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory, write_data_yaml):
    tmp = tmp_path_factory.mktemp("tta_shapes")
    root = generate_shapes(tmp / "shapes", seed=5, num_train=1, num_val=4)
    return write_data_yaml(tmp / "shapes.yaml", path=root)


class GtEchoTTA(nn.Module):
    """An oracle: in every TTA pass, each image's gt boxes as that pass's input shows them.

    It knows the batches and that each gets 18 forwards; what a pass did is read off its pixels,
    not asked of the TTA code: the image's size (zero padding) and whether it is mirrored (closer
    to the mirrored than to the plain resize of the batch's image).
    """

    def __init__(self, batches, num_classes: int):
        super().__init__()
        self.batches, self.num_classes, self.calls = list(batches), num_classes, 0

    def forward(self, images):
        batch = self.batches[self.calls // 18]
        self.calls += 1
        base = input_sizes(batch.orig_sizes, batch.scales)  # (B, 2) h, w of the un-augmented input
        b, g = batch.gt_mask.shape
        boxes = torch.zeros(b, g + 1, 4)  # (B, A, 4); the extra anchor is junk
        for k in range(b):
            nonzero = images[k].abs().sum(0) > 0  # (H, W)
            nh, nw = int(nonzero.any(1).nonzero().max()) + 1, int(nonzero.any(0).nonzero().max()) + 1
            h, w = int(base[k, 0]), int(base[k, 1])
            resized = F.interpolate(batch.images[k : k + 1, :, :h, :w], size=(nh, nw), mode="bilinear")[0]
            seen = images[k, :, :nh, :nw]
            flip = (seen - resized.flip(-1)).abs().mean() < (seen - resized).abs().mean()
            sx, sy = nw / w, nh / h
            gt = batch.gt_boxes[k] * torch.tensor([sx, sy, sx, sy])
            if flip:
                gt = torch.stack((nw - gt[:, 2], gt[:, 1], nw - gt[:, 0], gt[:, 3]), dim=1)
            boxes[k, :g] = gt
        cls_logits = torch.full((b, g + 1, self.num_classes), -20.0)
        iou_logits = torch.full((b, g + 1), -20.0)
        rows, cols = batch.gt_mask.nonzero(as_tuple=True)
        cls_logits[rows, cols, batch.gt_labels[rows, cols]] = 20.0
        iou_logits[rows, cols] = 20.0
        return _outputs(boxes, cls_logits, iou_logits)


def test_validate_with_augment_scores_an_oracle_perfectly(data_yaml):
    spec = load_data(data_yaml, require=("val",))
    loader = build_dataloader(spec, "val", imgsz=120, max_size=150, batch=2, workers=0, shuffle=False)
    batches = list(loader)
    model = GtEchoTTA(batches, num_classes=4)
    # iou 0.99: the 18 copies of a gt merge into one; distinct crowded gts (IoU <= 0.99) survive.
    metrics = validate(model, loader, iou=0.99, device=CPU, names=["c", "r", "t", "x"], verbose=False, augment=True)
    assert model.calls == 18 * len(batches)
    assert metrics["AP"] == 1.0 and metrics["AP75"] == 1.0 and metrics["AR100"] == 1.0


def test_detector_val_and_predict_with_augment(data_yaml, tmp_path):
    detector = Detector("ota_tiny.yaml", verbose=False)
    detector.names = ["circle", "rectangle", "triangle", "cross"]
    detector.net = build_detector(detector.cfg, 4)
    # A random network scores every anchor above conf: pre_nms_topk keeps its 18-pass NMS small.
    common = dict(
        data=str(data_yaml), imgsz=96, max_size=128, batch=2, workers=0, project=str(tmp_path), verbose=False, pre_nms_topk=50
    )
    metrics = detector.val(augment=True, **common)
    assert metrics["images"] == 4 and all(math.isfinite(metrics[k]) for k in ("AP", "AP50", "AR100"))
    assert json.loads((tmp_path / "val" / "exp" / "metrics.json").read_text())["images"] == 4
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    kw = dict(imgsz=96, max_size=128, conf=0.05, pre_nms_topk=50, device=CPU, names=detector.names)
    (plain,) = predict(detector.net, image, **kw)
    (augmented,) = predict(detector.net, image, augment=True, **kw)
    boxes = augmented.boxes.data
    assert boxes.shape[1] == 6 and len(boxes) > 0 and not torch.equal(boxes, plain.boxes.data)
    assert (boxes[:, :4] >= 0).all() and (boxes[:, [0, 2]] <= 150).all() and (boxes[:, [1, 3]] <= 100).all()
    assert TTA_RATIOS[4] == 1.0
