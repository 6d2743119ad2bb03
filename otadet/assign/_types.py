"""What every assigner returns.

Target convention, used everywhere in otadet (as torchvision's Matcher and detectron2's
`label_anchors`): for each anchor point, `matched` holds

    >= 0  the index of the gt it learns from (a positive),
      -1  background (a negative: learns "no object"),
      -2  ignore (excluded from every loss).

`labels` holds the gt's contiguous class for positives and `num_classes` otherwise.
"""

from typing import NamedTuple

from torch import Tensor

__all__ = ["AssignResult", "BACKGROUND", "IGNORE"]

BACKGROUND = -1
IGNORE = -2


class AssignResult(NamedTuple):
    """Per-anchor targets for a batch. B=batch, A=anchor points."""

    matched: Tensor  # (B, A) int64: gt index >= 0, BACKGROUND or IGNORE
    labels: Tensor  # (B, A) int64: class of the matched gt, num_classes elsewhere
    box_targets: Tensor  # (B, A, 4) float32 xyxy pixels of the matched gt, 0 elsewhere
    iou_targets: Tensor  # (B, A) float32 IoU(predicted box, matched gt), 0 elsewhere
    stats: dict  # scalar tensors for logging (num_pos, mean_k, ...); never used by the loss
