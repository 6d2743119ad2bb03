"""Losses against values computed by hand from their formulas (numpy-free scalar math)."""

import math

import pytest
import torch

from otadet.assign import BACKGROUND, IGNORE, AssignResult
from otadet.criterion import OTACriterion
from otadet.models.detector import DenseOutputs


def _focal(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _giou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _fixed_assigner(matched, labels, box_targets, iou_targets):
    def assign(*_args):
        return AssignResult(matched, labels, box_targets, iou_targets, {"num_pos": (matched >= 0).sum()})

    return assign


def test_losses_equal_hand_computed_values():
    # 1 image, 4 anchors, 2 classes: anchor 0 -> gt 0 (class 1), anchor 1 -> gt 1 (class 0),
    # anchor 2 background, anchor 3 ignored.
    cls = [[0.3, -1.2], [1.5, 0.1], [-2.0, 0.7], [4.0, 4.0]]
    boxes = [[0, 0, 10, 10], [5, 5, 20, 25], [0, 0, 1, 1], [0, 0, 2, 2]]
    iou_logit = [0.4, -0.6, 2.0, 1.0]
    gts = [[1, 1, 11, 12], [4, 6, 18, 24]]
    iou_t = [0.7, 0.55]
    outputs = DenseOutputs(
        torch.tensor([cls]), torch.tensor([boxes], dtype=torch.float32), torch.tensor([iou_logit]), torch.zeros(4, 2), torch.ones(4)
    )
    matched = torch.tensor([[0, 1, BACKGROUND, IGNORE]])
    labels = torch.tensor([[1, 0, 2, 2]])
    box_targets = torch.tensor([[gts[0], gts[1], [0, 0, 0, 0], [0, 0, 0, 0]]], dtype=torch.float32)
    iou_targets = torch.tensor([[iou_t[0], iou_t[1], 0.0, 0.0]])
    criterion = OTACriterion(num_classes=2, assigner=_fixed_assigner(matched, labels, box_targets, iou_targets))
    gt_boxes, gt_mask = torch.tensor([gts], dtype=torch.float32), torch.ones(1, 2, dtype=torch.bool)
    loss, items, _ = criterion(outputs, gt_boxes, torch.tensor([[1, 0]]), gt_mask)

    onehot = [[0, 1], [1, 0], [0, 0]]  # anchor 3 is ignored: no classification loss
    focal = sum(_focal(cls[a][c], onehot[a][c]) for a in range(3) for c in range(2)) / 2
    giou = 2.0 * sum(1 - _giou(boxes[a], gts[a]) for a in range(2)) / 2
    bce = 0.5 * sum(_bce(iou_logit[a], iou_t[a]) for a in range(2)) / 2
    assert items["cls"].item() == pytest.approx(focal, rel=1e-5)
    assert items["box"].item() == pytest.approx(giou, rel=1e-5)
    assert items["iou"].item() == pytest.approx(bce, rel=1e-5)
    assert loss.item() == pytest.approx(focal + giou + bce, rel=1e-5)


def test_no_positives_gives_finite_background_only_loss():
    from otadet.assign import ota

    A, C = 6, 3
    outputs = DenseOutputs(
        torch.randn(2, A, C, requires_grad=True), torch.rand(2, A, 4) * 10, torch.randn(2, A), torch.rand(A, 2) * 10, torch.full((A,), 8.0)
    )
    criterion = OTACriterion(num_classes=C, assigner=ota)
    loss, items, stats = criterion(outputs, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert torch.isfinite(loss)
    # Normaliser clamps at 1: the classification loss is the plain focal sum against background.
    expected = sum(_focal(v, 0) for v in outputs.cls_logits.detach().flatten().tolist())
    assert items["cls"].item() == pytest.approx(expected, rel=1e-5)
    assert items["box"].item() == 0 and items["iou"].item() == 0
    loss.backward()
    assert torch.isfinite(outputs.cls_logits.grad).all()


def test_ignore_regions_turn_background_into_ignore_only():
    from otadet.assign import BACKGROUND, IGNORE, AssignResult, mark_ignored

    points = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [35.0, 5.0]])  # (A=4, 2)
    matched = torch.tensor([[0, BACKGROUND, BACKGROUND, BACKGROUND]])
    result = AssignResult(matched, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, 4), torch.zeros(1, 4), {})
    # One ignore box over points 0..2 and one padded (masked-out) box over point 3.
    boxes = torch.tensor([[[0.0, 0.0, 26.0, 10.0], [30.0, 0.0, 40.0, 10.0]]])
    out = mark_ignored(result, points, boxes, torch.tensor([[True, False]]))
    assert out.matched.tolist() == [[0, IGNORE, IGNORE, BACKGROUND]]  # the positive stays positive
    assert int(out.stats["num_ignored"]) == 2
    empty = mark_ignored(result, points, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    assert torch.equal(empty.matched, matched)
