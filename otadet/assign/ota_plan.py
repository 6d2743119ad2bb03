"""OTA's transport plan over every anchor, for inspection (the assignment visualiser, paper Fig. 3).

`ota` never holds this plan whole: it solves the same problem over the candidates only, or
over the (gt, candidate) pairs, which give the same iterates (see _transport, _sparse). Here
the problem of Eqs. 4-7 is built densely over all A anchors and solved by the public
`sinkhorn`, so every anchor's shares can be read: N_amb counts the anchors whose largest share
of their unit is below AMBIGUOUS_SHARE, as `ota`'s num_ambiguous does.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded), M=G+1 suppliers (the
background last), C=classes.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ..knobs import OTAKnobs
from ._boxes import pairwise_iou
from ._costs import classification_costs, regression_cost
from ._prior import prior_candidates, resolve_ambiguous
from ._transport import AMBIGUOUS_SHARE
from .sinkhorn import sinkhorn

__all__ = ["OTAPlan", "ota_plan"]


class OTAPlan(NamedTuple):
    plan: Tensor  # (B, G+1, A) pi_ij, the background last
    k: Tensor  # (B, G) units each gt supplies (0 for padding)
    candidates: Tensor  # (B, G, A) bool, the centre prior (after an ambiguity rule, if any)
    choice: Tensor  # (B, A) supplier of each anchor read off the plan as `ota` does, in [0, G]; G = background
    max_share: Tensor  # (B, A) max_i pi_ij / sum_i pi_ij

    @property
    def ambiguous(self) -> Tensor:
        """(B, A) bool: no supplier sends this anchor AMBIGUOUS_SHARE of its unit (N_amb's anchors)."""
        return self.max_share < AMBIGUOUS_SHARE


@torch.no_grad()
def ota_plan(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    **knobs,
) -> OTAPlan:
    """The dense plan of `ota` with the same inputs and knobs, the fields of OTAKnobs (compact,
    bucket and sparse change only how `ota` solves, not the solution, and are ignored). Needs gts (G >= 1)."""
    cfg = OTAKnobs(**knobs)
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    A = cls_logits.shape[1]
    candidates = prior_candidates(
        points, strides, gt_boxes, gt_mask, center_prior=cfg.center_prior, center_radius=cfg.center_radius,
        candidate_margin=cfg.candidate_margin, prior_radius=cfg.prior_radius,
    )  # fmt: skip  (B, G, A)
    gt_cost, background_cost = classification_costs(cls_logits, gt_labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (B, G, A)
    pair_cost = gt_cost + cfg.iou_weight * regression_cost(ious, gt_boxes, pred_boxes, cfg.iou_cost)  # Eq. 7, (B, G, A)
    if cfg.ambiguity != "none":
        area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, G)
        score = {"min_area": area[:, :, None].expand_as(ious), "max_iou": -ious, "min_loss": pair_cost}[cfg.ambiguity]
        candidates = resolve_ambiguous(candidates, score)
    # A gt with no candidate would pay the exclusion everywhere, a constant over its row: not added (as `ota`).
    orphans = gt_mask & ~candidates.any(dim=2)  # (B, G)
    pair_cost = pair_cost + cfg.exclusion * (~candidates & ~orphans[:, :, None])
    cost = torch.cat((pair_cost, background_cost[:, None, :]), dim=1)  # (B, G+1, A)

    if cfg.fixed_k is None:  # Sec. 3.3: dynamic k from the top-q candidate IoUs
        k = (ious * candidates).topk(min(cfg.top_q, A), dim=2).values.sum(dim=2).floor()  # (B, G)
    else:
        k = candidates.sum(dim=2).clamp(max=cfg.fixed_k).float()
    k = k.clamp(min=1) * gt_mask
    supply = torch.cat((k, (A - k.sum(dim=1, keepdim=True)).clamp(min=0)), dim=1)  # Eq. 4, (B, G+1)
    plan = sinkhorn(cost, supply, torch.ones_like(background_cost), eps=cfg.eps, iters=cfg.iters, tol=cfg.tol)  # (B, G+1, A)

    column = plan.sum(dim=1).clamp(min=torch.finfo(plan.dtype).tiny)  # (B, A)
    max_share = plan.amax(dim=1) / column
    read = plan
    if cfg.rescale_plan:  # the official read-out: each supplier's row scaled so its largest entry is 1
        row_max = plan.amax(dim=2, keepdim=True)
        read = torch.where(row_max > 0, plan / row_max, plan)
    return OTAPlan(plan, k, candidates, read.argmax(dim=1), max_share)
