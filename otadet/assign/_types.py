"""What every assigner returns.

Target convention, used everywhere in otadet (as torchvision's Matcher and detectron2's
`label_anchors`): for each anchor point, `matched` holds

    >= 0  the index of the gt it learns from (a positive),
      -1  background (a negative: learns "no object"),
      -2  ignore (excluded from every loss).

`labels` holds the gt's contiguous class for positives and `num_classes` otherwise.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ._boxes import points_in_boxes

__all__ = ["AssignResult", "BACKGROUND", "IGNORE", "mark_ignored"]

BACKGROUND = -1
IGNORE = -2


class AssignResult(NamedTuple):
    """Per-anchor targets for a batch. B=batch, A=anchor points."""

    matched: Tensor  # (B, A) int64: gt index >= 0, BACKGROUND or IGNORE
    labels: Tensor  # (B, A) int64: class of the matched gt, num_classes elsewhere
    box_targets: Tensor  # (B, A, 4) float32 xyxy pixels of the matched gt, 0 elsewhere
    iou_targets: Tensor  # (B, A) float32 IoU(predicted box, matched gt), 0 elsewhere
    stats: dict  # scalar tensors for logging (num_pos, mean_k, ...); never used by the loss


def mark_ignored(result: AssignResult, points: Tensor, ignore_boxes: Tensor, ignore_mask: Tensor) -> AssignResult:
    """Background anchors whose point lies in an ignore region (B, I, 4) become IGNORE.

    Ignore regions (COCO iscrowd, CrowdHuman 'mask' boxes) hold unlabelled objects: an anchor
    there that no gt claimed must not be taught "background". Positives stay positive.
    Applied after any assigner, so every assigner handles them the same way.
    """
    if ignore_boxes.shape[1] == 0 or not bool(ignore_mask.any()):
        return result
    inside = points_in_boxes(points, ignore_boxes.float(), ignore_mask)  # (B, A)
    matched = torch.where(inside & (result.matched == BACKGROUND), IGNORE, result.matched)
    stats = {**result.stats, "num_ignored": (matched == IGNORE).sum()}
    return result._replace(matched=matched, stats=stats)
