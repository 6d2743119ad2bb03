"""Targets from a per-anchor match, shared by the assigners that pick gts by rule (FCOS, ATSS, SimOTA).

Shapes: B=batch, A=anchor points, G=gts (padded). Target convention: see otadet.assign._types.
"""

import torch
from torch import Tensor

from ._boxes import aligned_iou
from ._types import BACKGROUND, AssignResult

__all__ = ["targets_from_matches", "all_background", "match_stats", "positives_per_gt"]


def targets_from_matches(
    positive: Tensor, matched: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int, stats: dict
) -> AssignResult:
    """AssignResult for anchors whose gt is matched (B, A) where positive (B, A) holds.

    iou_targets are IoU(predicted box, matched gt), the IoU branch's target, as OTA's.
    """
    B, A = matched.shape
    gt_index = torch.where(positive, matched, 0)  # (B, A) any valid index for the gathers
    box_targets = gt_boxes.gather(1, gt_index[:, :, None].expand(B, A, 4)) * positive[:, :, None]  # (B, A, 4)
    return AssignResult(
        matched=torch.where(positive, matched, BACKGROUND),
        labels=torch.where(positive, gt_labels.gather(1, gt_index), num_classes),
        box_targets=box_targets,
        iou_targets=aligned_iou(pred_boxes, box_targets) * positive,  # (B, A)
        stats=stats,
    )


def all_background(B: int, A: int, C: int, device: torch.device, **extra_stats: Tensor) -> AssignResult:
    """No gt in the batch: every anchor is background (for OTA the exact transport solution).
    `extra_stats` adds an assigner's own statistics to the common ones."""
    zero = torch.zeros((), device=device)
    stats = {"num_pos": zero.long(), "num_gts": zero.long(), "mean_k": zero, "pos_per_gt": zero, "num_ambiguous": zero.long()}
    stats |= extra_stats
    return AssignResult(
        matched=torch.full((B, A), BACKGROUND, dtype=torch.long, device=device),
        labels=torch.full((B, A), C, dtype=torch.long, device=device),
        box_targets=torch.zeros(B, A, 4, device=device),
        iou_targets=torch.zeros(B, A, device=device),
        stats=stats,
    )


def match_stats(claimed: Tensor, positive: Tensor, gt_mask: Tensor) -> dict:
    """Logging statistics from claimed (B, G, A) gt-anchor pairs before the tie-break and the positives (B, A).

    mean_k: pairs claimed per gt (each gt's k before ties are resolved); pos_per_gt: positives per
    gt after; num_ambiguous: anchors claimed by more than one gt. Not 0-dim (not logged, read by
    the assignment visualiser): dynamic_k (B, G) each gt's claims, ambiguous (B, A) bool.
    """
    num_gts = gt_mask.sum()
    num_pos = positive.sum()
    ambiguous = claimed.sum(dim=1) > 1  # (B, A)
    return {
        "num_pos": num_pos,
        "num_gts": num_gts,
        "mean_k": claimed.sum() / num_gts,
        "pos_per_gt": num_pos / num_gts,
        "num_ambiguous": ambiguous.sum(),
        "dynamic_k": claimed.sum(dim=2).float(),
        "ambiguous": ambiguous,
    }


def positives_per_gt(matched: Tensor, gt_mask: Tensor) -> Tensor:
    """Anchors matched to each gt: matched (B, A) (the target convention), gt_mask (B, G) -> (B, G) int64, 0 for padding."""
    positive = matched >= 0  # (B, A)
    counts = torch.zeros(gt_mask.shape, dtype=torch.long, device=matched.device)
    if gt_mask.shape[1] == 0:
        return counts
    return counts.scatter_add_(1, torch.where(positive, matched, 0), positive.long()) * gt_mask
