"""Training diagnostics from the criterion: positives per gt (min), ambiguous anchors per image and the
assigner's wall time, on hand cases whose answers are counted by eye."""

import time

import pytest
import torch

from otadet.assign import BACKGROUND, IGNORE, AssignResult, fcos, positives_per_gt
from otadet.criterion import OTACriterion
from otadet.models.detector import DenseOutputs


def _outputs(B: int, points: torch.Tensor, C: int = 2) -> DenseOutputs:
    A = points.shape[0]
    boxes = torch.cat((points - 4, points + 4), dim=1).expand(B, A, 4).clone()
    return DenseOutputs(torch.zeros(B, A, C), boxes, torch.zeros(B, A), points, torch.full((A,), 8.0))


def test_positives_per_gt_counts_matches_and_skips_padding():
    matched = torch.tensor([[0, 0, 1, BACKGROUND, IGNORE, 0], [BACKGROUND, 0, BACKGROUND, BACKGROUND, IGNORE, BACKGROUND]])
    gt_mask = torch.tensor([[True, True, False], [True, False, False]])
    assert positives_per_gt(matched, gt_mask).tolist() == [[3, 1, 0], [1, 0, 0]]


def test_criterion_reports_min_positives_ambiguity_per_image_and_assigner_time():
    matched = torch.tensor([[0, 0, 1, BACKGROUND], [BACKGROUND, 0, 0, BACKGROUND]])  # gt 1 of image 0 has 1 positive

    def slow_assigner(points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask):
        time.sleep(0.05)
        return AssignResult(
            matched, torch.where(matched >= 0, 0, 2), gt_boxes[:, :1].expand(2, 4, 4) * (matched >= 0)[..., None],
            torch.full((2, 4), 0.5), {"num_ambiguous": torch.tensor(3)},
        )  # fmt: skip

    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 8.0], [16.0, 0.0, 24.0, 8.0]], [[0.0, 0.0, 24.0, 8.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_mask = torch.tensor([[True, True], [True, False]])
    criterion = OTACriterion(num_classes=2, assigner=slow_assigner)
    _, _, stats = criterion(_outputs(2, points), gt_boxes, torch.zeros(2, 2, dtype=torch.long), gt_mask)
    assert int(stats["min_pos_per_gt"]) == 1  # counts 2, 1 | 2 (the padded gt's 0 does not count)
    assert float(stats["amb_per_image"]) == 1.5  # 3 ambiguous anchors over 2 images
    assert 0.05 <= float(stats["seconds"]) < 5.0


def test_fcos_hand_case_k_ambiguity_and_positives():
    # Points x = 4, 12, 20 at stride 8. Gt A [0, 16] holds x = 4, 12; gt B [8, 24] holds x = 12, 20.
    # x = 12 is claimed by both (ambiguous); equal areas, so it goes to the first gt, A.
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
    outputs = _outputs(1, points)
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 8.0], [8.0, 0.0, 24.0, 8.0]]])
    gt_labels, gt_mask = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    result = fcos(points, outputs.strides, outputs.cls_logits, outputs.boxes, gt_boxes, gt_labels, gt_mask, scale_ranges=(0, 64))
    assert result.matched.tolist() == [[0, 0, 1]]
    assert result.stats["dynamic_k"].tolist() == [[2.0, 2.0]]  # claims before the tie-break
    assert result.stats["ambiguous"].tolist() == [[False, True, False]] and int(result.stats["num_ambiguous"]) == 1
    criterion = OTACriterion(
        num_classes=2,
        assigner=lambda *a: fcos(*a, scale_ranges=(0, 64)),
    )
    _, _, stats = criterion(outputs, gt_boxes, gt_labels, gt_mask)
    assert int(stats["min_pos_per_gt"]) == 1 and float(stats["pos_per_gt"]) == 1.5 and float(stats["mean_k"]) == 2.0
    assert float(stats["amb_per_image"]) == 1.0


def test_no_gts_gives_zero_min_positives():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    criterion = OTACriterion(num_classes=2, assigner=lambda *a: fcos(*a, scale_ranges=(0, 64)))
    _, _, stats = criterion(_outputs(1, points), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    assert int(stats["min_pos_per_gt"]) == 0 and float(stats["amb_per_image"]) == 0
