"""FCOS assignment (Tian et al., ICCV 2019, with centre sampling), batched over images.

An anchor point is a positive of a gt when it lies inside the gt box, within the centre
square of half-size center_radius * stride around the gt centre, and the gt's size as seen
from the point, max(l, t, r, b), falls in its level's scale range. A point that several gts
claim learns the one of least area.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes. Target convention: see otadet.assign._types.
"""

import math

import torch
from torch import Tensor

from ..knobs import FCOSKnobs
from ._boxes import near_centre
from ._result import all_background, match_stats, targets_from_matches
from ._types import AssignResult

__all__ = ["fcos"]


@torch.no_grad()
def fcos(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    **knobs,
) -> AssignResult:
    """Assign anchors to gts by FCOS's rules (torchvision's FCOS matcher, batched).

    Args:
        points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask: as otadet.assign.ota
            (cls_logits only give the shapes; the rule ignores predictions).
        knobs: fields of FCOSKnobs (otadet/knobs.py): scale_ranges, center_radius.
    Returns:
        AssignResult; stats holds num_pos, num_gts, mean_k (claims per gt), pos_per_gt, num_ambiguous.
    """
    cfg = FCOSKnobs(**knobs)
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    pred_boxes, gt_boxes = pred_boxes.float(), gt_boxes.float()
    if G == 0 or not bool(gt_mask.any()):
        return all_background(B, A, C, cls_logits.device)

    level_strides = torch.unique(strides)  # (L,) increasing
    if len(cfg.scale_ranges) != len(level_strides) + 1:
        raise ValueError(
            f"fcos: scale_ranges {tuple(cfg.scale_ranges)} has {len(cfg.scale_ranges)} entries; "
            f"{len(level_strides)} FPN levels need {len(level_strides) + 1}"
        )
    bounds = torch.tensor([float(b) for b in cfg.scale_ranges], device=strides.device)  # (L+1,)
    level = torch.searchsorted(level_strides, strides)  # (A,)
    lower, upper = bounds[level], bounds[level + 1]  # (A,)

    x, y = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # each (B, G, 1)
    left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y  # each (B, G, A)
    inside = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
    reach = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))  # max(l, t, r, b)
    claimed = inside & near_centre(points, strides, gt_boxes, radius=cfg.center_radius)
    claimed &= (reach > lower) & (reach < upper) & gt_mask[:, :, None]  # (B, G, A)

    # Ambiguous points learn the smallest gt; among equal areas the first gt (torchvision's max).
    area = (x2 - x1) * (y2 - y1)  # (B, G, 1)
    least_area, matched = torch.where(claimed, area, math.inf).min(dim=1)  # (B, A)
    positive = claimed.any(dim=1)  # (B, A)
    stats = match_stats(claimed, positive, gt_mask)
    return targets_from_matches(positive, matched, pred_boxes, gt_boxes, gt_labels, C, stats)
