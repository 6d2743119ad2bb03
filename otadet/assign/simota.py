"""SimOTA: the dynamic-k assignment of YOLOX (Ge et al., 2021), batched over images.

OTA without Sinkhorn. A point inside some gt box or some gt's centre region is a candidate
(of every gt); each gt takes its dynamic_k candidates of lowest cost, where dynamic_k is the
floor of the sum of its top_q IoUs; a point taken by several gts goes to the gt of least
cost (over all gts, as YOLOX).

Cost: YOLOX uses the BCE of sqrt(sigmoid(cls) * sigmoid(obj)); this detector has no objectness,
so the classification term is OTA's focal cost on sigmoid(cls) (classification_costs), which
keeps the comparison with OTA about the assignment alone. The rest is YOLOX's:
    cost = cls + iou_weight * -log(IoU) + outside_cost * (not inside both the box and the centre region).

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes. Target convention: see otadet.assign._types.
"""

import math

import torch
from torch import Tensor

from ..knobs import SimOTAKnobs
from ._boxes import inside_boxes, near_centre, pairwise_iou
from ._costs import classification_costs
from ._result import all_background, match_stats, targets_from_matches
from ._types import AssignResult

__all__ = ["simota"]


@torch.no_grad()
def simota(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    **knobs,
) -> AssignResult:
    """Assign anchors to gts by YOLOX's SimOTA.

    Args:
        points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask: as otadet.assign.ota.
        knobs: fields of SimOTAKnobs (otadet/knobs.py): center_radius, iou_weight, outside_cost, top_q,
            focal_alpha, focal_gamma.
    Returns:
        AssignResult; stats holds num_pos, num_gts, mean_k (mean dynamic k), pos_per_gt, num_ambiguous.
    """
    cfg = SimOTAKnobs(**knobs)
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    if G == 0 or not bool(gt_mask.any()):
        return all_background(B, A, C, cls_logits.device)

    valid = gt_mask[:, :, None]  # (B, G, 1)
    in_box = inside_boxes(points, gt_boxes)  # (B, G, A)
    in_centre = near_centre(points, strides, gt_boxes, radius=cfg.center_radius)  # (B, G, A)
    candidates = ((in_box | in_centre) & valid).any(dim=1, keepdim=True)  # (B, 1, A): YOLOX's fg_mask

    gt_cost, _ = classification_costs(cls_logits, gt_labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)  # (B, G, A)
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (B, G, A)
    cost = gt_cost + cfg.iou_weight * -torch.log(ious + 1e-8) + cfg.outside_cost * ~(in_box & in_centre)
    cost = cost.masked_fill(~(candidates & valid), math.inf)  # (B, G, A): only candidates, only real gts

    # Dynamic k from the gt's top_q IoUs over the candidates (never more than top_q).
    q = min(cfg.top_q, A)
    dynamic_k = (ious * candidates).topk(q, dim=2).values.sum(dim=2).floor().clamp(min=1)  # (B, G)
    # Each gt takes its dynamic_k cheapest candidates: topk over padded gts, then a rank cut.
    cheapest, index = cost.topk(q, dim=2, largest=False)  # (B, G, q) increasing cost
    rank = torch.arange(q, device=cost.device)
    take = (rank < dynamic_k[..., None]) & torch.isfinite(cheapest)  # (B, G, q)
    claimed = torch.zeros_like(cost, dtype=torch.bool).scatter_(2, index, take)  # (B, G, A)

    # A point claimed by several gts goes to the gt of least cost among all gts (YOLOX).
    claims = claimed.sum(dim=1)  # (B, A)
    matched = torch.where(claims > 1, cost.argmin(dim=1), claimed.to(torch.uint8).argmax(dim=1))  # (B, A)
    positive = claims > 0
    stats = match_stats(claimed, positive, gt_mask)
    stats["dynamic_k"] = dynamic_k * gt_mask  # (B, G)
    stats["mean_k"] = stats["dynamic_k"].sum() / stats["num_gts"]
    return targets_from_matches(positive, matched, pred_boxes, gt_boxes, gt_labels, C, stats)
