"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), batched over images.

Each point carries one square anchor box (side anchor_size * stride, ATSS's FCOS setting).
For a gt, the top_k anchors nearest its centre on every FPN level are its candidates; those
whose IoU with the gt reaches the mean + std of the candidates' IoUs, and whose centre lies
inside the gt, are its positives. A point that several gts claim learns the one of highest IoU.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
K=candidates per gt (top_k per level), C=classes. Target convention: see otadet.assign._types.
"""

import math

import torch
from torch import Tensor

from ..knobs import ATSSKnobs
from ._boxes import anchor_boxes, inside_boxes, pairwise_iou
from ._result import all_background, match_stats, targets_from_matches
from ._types import AssignResult

__all__ = ["atss"]


@torch.no_grad()
def atss(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    **knobs,
) -> AssignResult:
    """Assign anchors to gts by ATSS's adaptive IoU threshold.

    Args:
        points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask: as otadet.assign.ota;
            points must be laid out level by level (as otadet.models.anchor_points does).
        knobs: fields of ATSSKnobs (otadet/knobs.py): top_k, anchor_size, inside_margin.
    Returns:
        AssignResult; stats holds num_pos, num_gts, mean_k (claims per gt), pos_per_gt, num_ambiguous.
    """
    cfg = ATSSKnobs(**knobs)
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    pred_boxes, gt_boxes = pred_boxes.float(), gt_boxes.float()
    if G == 0 or not bool(gt_mask.any()):
        return all_background(B, A, C, cls_logits.device)

    anchor_ious = pairwise_iou(gt_boxes, anchor_boxes(points, strides, cfg.anchor_size))  # (B, G, A)
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
    distance = (points[:, 0] - centre[..., 0, None]) ** 2 + (points[:, 1] - centre[..., 1, None]) ** 2  # (B, G, A)
    # Sec. 3.1: the top_k anchors closest to the gt centre on each level (squared distance, same order).
    candidates, start = [], 0
    for count in torch.unique_consecutive(strides, return_counts=True)[1].tolist():
        nearest = distance[..., start : start + count].topk(min(cfg.top_k, count), dim=2, largest=False).indices
        candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates, dim=2)  # (B, G, K)

    # Threshold per gt: mean + std of the candidates' IoUs (std unbiased, as the official code).
    candidate_ious = anchor_ious.gather(2, candidates)  # (B, G, K)
    threshold = candidate_ious.mean(dim=2) + candidate_ious.std(dim=2)  # (B, G)
    inside = inside_boxes(points, gt_boxes, margin=cfg.inside_margin).gather(2, candidates)  # (B, G, K)
    keep = (candidate_ious >= threshold[..., None]) & inside & gt_mask[:, :, None]  # (B, G, K)
    claimed = torch.zeros_like(anchor_ious, dtype=torch.bool).scatter_(2, candidates, keep)  # (B, G, A)

    # Ambiguous points learn the gt of highest anchor IoU; among equal IoUs the first gt.
    best_iou, matched = torch.where(claimed, anchor_ious, -math.inf).max(dim=1)  # (B, A)
    positive = claimed.any(dim=1)
    stats = match_stats(claimed, positive, gt_mask)
    return targets_from_matches(positive, matched, pred_boxes, gt_boxes, gt_labels, C, stats)
