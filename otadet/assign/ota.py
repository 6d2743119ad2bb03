"""OTA: Optimal Transport Assignment (Ge et al., CVPR 2021), batched over images.

Each gt is a supplier of k_i units of "positive label", the background a supplier of the
rest; every anchor point demands one unit. The cheapest way to ship them (entropic OT,
solved by Sinkhorn) decides which gt, if any, each anchor learns from. Every knob of the
paper's ablations is a keyword argument (docs/assigners.md), settable from the model YAML.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes. Target convention: see otadet.assign._types.
"""

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ._boxes import pairwise_giou, pairwise_iou
from ._prior import AMBIGUITY_RULES, CENTER_PRIORS, prior_candidates, resolve_ambiguous
from ._transport import orphan_columns, transport, transport_compacted
from ._types import BACKGROUND, AssignResult

__all__ = ["ota", "classification_costs", "IOU_COSTS"]

IOU_COSTS = ("log", "linear", "giou")
HARD_EXCLUSION = 1e6  # an extra cost this large excludes exactly (the official code's value)


def classification_costs(
    cls_logits: Tensor, gt_labels: Tensor, *, alpha: float, gamma: float
) -> tuple[Tensor, Tensor]:
    """Focal cost of each anchor predicting each gt's one-hot target, and background.

    The focal loss of a one-hot target summed over C classes equals the all-negative sum
    (the background cost) minus the negative term at the gt's class plus the positive term
    there, so the gt costs are (B, G, A) gathers, never a (B, G, A, C) tensor.

    cls_logits (B, A, C), gt_labels (B, G) -> (gt_cost (B, G, A), background_cost (B, A)).
    """
    B, A, _ = cls_logits.shape
    negative = sigmoid_focal_loss(cls_logits, torch.zeros_like(cls_logits), alpha, gamma)  # (B, A, C)
    background_cost = negative.sum(dim=-1)  # (B, A)
    index = gt_labels[:, :, None].expand(B, gt_labels.shape[1], A)  # (B, G, A)
    logits_at_gt = cls_logits.transpose(1, 2).gather(1, index)  # (B, G, A)
    positive_at_gt = sigmoid_focal_loss(logits_at_gt, torch.ones_like(logits_at_gt), alpha, gamma)
    negative_at_gt = negative.transpose(1, 2).gather(1, index)
    return background_cost[:, None, :] - negative_at_gt + positive_at_gt, background_cost


def regression_cost(ious: Tensor, gt_boxes: Tensor, pred_boxes: Tensor, form: str) -> Tensor:
    """IoU loss of every predicted box (B, A, 4) for every gt (B, G, 4) -> (B, G, A).
    'log': -log IoU (official code), 'linear': 1 - IoU, 'giou': 1 - GIoU."""
    if form == "log":
        return -torch.log(ious + 1e-8)
    if form == "linear":
        return 1.0 - ious
    return 1.0 - pairwise_giou(gt_boxes, pred_boxes)


def _check_knobs(iou_cost: str, center_prior: str, ambiguity: str, prior_radius: int, fixed_k: int | None, top_q: int) -> None:
    for name, value, allowed in (
        ("iou_cost", iou_cost, IOU_COSTS),
        ("center_prior", center_prior, CENTER_PRIORS),
        ("ambiguity", ambiguity, AMBIGUITY_RULES),
    ):
        if value not in allowed:
            raise ValueError(f"ota: {name}={value!r} is not one of {', '.join(allowed)} — set assigner.{name} in the model YAML")
    for name, value in (("prior_radius", prior_radius), ("fixed_k", fixed_k), ("top_q", top_q)):
        if value is not None and value < 1:
            raise ValueError(f"ota: {name}={value} must be >= 1")


@torch.no_grad()
def ota(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    iou_weight: float = 1.5,
    iou_cost: str = "log",
    center_prior: str = "official",
    center_radius: float = 2.5,
    candidate_margin: float = 0.01,
    non_candidate_cost: float = 1e6,
    prior_radius: int = 5,
    prior_cost: float = 1e6,
    top_q: int = 20,
    fixed_k: int | None = None,
    ambiguity: str = "none",
    eps: float = 0.1,
    iters: int = 50,
    tol: float | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    rescale_plan: bool = True,
    compact: bool = True,
) -> AssignResult:
    """Assign anchors to gts by optimal transport.

    Args:
        points: (A, 2) anchor points, x y in input pixels.
        strides: (A,) FPN stride of each point.
        cls_logits: (B, A, C) classification logits (detached predictions).
        pred_boxes: (B, A, 4) predicted boxes, xyxy pixels.
        gt_boxes: (B, G, 4) xyxy pixels, padded; gt_labels (B, G) int64; gt_mask (B, G) bool.
        iou_weight: alpha in the cost, cls + alpha * IoU loss  (paper Eq. 7: 1.5).
        iou_cost: the IoU loss: 'log' -log IoU (official), 'linear' 1 - IoU, 'giou' 1 - GIoU.
        center_prior: 'official' (center_radius, candidate_margin: inside the box and within
            center_radius*stride of its centre; others +non_candidate_cost) or 'nearest' (the
            prior_radius**2 points nearest the centre on each level; others +prior_cost).
            An extra cost >= 1e6 excludes exactly; a smaller prior_cost is a soft prior.
        top_q, fixed_k: k_i = max(1, floor(sum of the top_q candidate IoUs)) (Sec. 3.3, q = 20),
            or fixed_k for every gt (clipped to its number of candidates) when set.
        ambiguity: 'none' (plain OTA), or settle anchors that are candidates of several gts
            first by 'min_area' (smallest gt), 'max_iou' (IoU of the predicted box) or
            'min_loss' (lowest cls + alpha*IoU cost), then run OTA (paper Table 3).
        eps, iters, tol: Sinkhorn regularisation, iterations (official: 0.1, 50) and optional
            early stop on the marginal error (None runs all iters).
        focal_alpha, focal_gamma: the focal cost, as the focal loss.
        rescale_plan: divide each supplier's row by its max before the argmax (official code).
        compact: solve only over anchors some gt can reach (same assignment, faster); used
            when the exclusion cost is >= 1e6.
    A gt with no candidate at all (smaller than the point spacing: an "orphan") has +1e6 on
    every anchor, a constant shift of its row that changes no OT solution: it is dropped, so
    such a gt competes for every anchor and still gets its k = 1 positive.
    Returns:
        AssignResult. stats, 0-dim: num_pos, num_gts, mean_k, pos_per_gt, marginal_error (max
        |column sum - 1| of the plan), num_ambiguous (N_amb: anchors whose largest share of
        their unit, max_i pi_ij / sum_i pi_ij, is < 0.9; such an anchor necessarily receives
        >= 0.1 foreground mass), sinkhorn_iters, compacted (1 if the compacted solve was used).
        Not 0-dim: dynamic_k (B, G) the k of every gt (0 for padding).
    """
    _check_knobs(iou_cost, center_prior, ambiguity, prior_radius, fixed_k, top_q)
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    # Assignment is done in float32 whatever the autocast state.
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    device = cls_logits.device
    if G == 0 or not bool(gt_mask.any()):
        return _all_background(B, A, C, G, device)

    gt_cost, background_cost = classification_costs(cls_logits, gt_labels, alpha=focal_alpha, gamma=focal_gamma)
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (B, G, A)
    # Eq. 7: c_ij = L_cls + alpha * L_reg.
    pair_cost = gt_cost + iou_weight * regression_cost(ious, gt_boxes, pred_boxes, iou_cost)  # (B, G, A)
    candidates = prior_candidates(
        points, strides, gt_boxes, gt_mask, center_prior=center_prior, center_radius=center_radius,
        candidate_margin=candidate_margin, prior_radius=prior_radius,
    )  # fmt: skip
    if ambiguity != "none":
        area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, G)
        score = {"min_area": area[:, :, None].expand_as(ious), "max_iou": -ious, "min_loss": pair_cost}[ambiguity]
        candidates = resolve_ambiguous(candidates, score)
    orphans = gt_mask & ~candidates.any(dim=2)  # (B, G)
    exclusion = non_candidate_cost if center_prior == "official" else prior_cost
    # The centre prior: non-candidates pay `exclusion`; orphans pay nothing (a row constant).
    cost = pair_cost + exclusion * (~candidates & ~orphans[:, :, None])
    cost = torch.cat((cost, background_cost[:, None, :]), dim=1)  # (B, G+1, A)

    num_candidates = candidates.sum(dim=2)  # (B, G)
    if fixed_k is None:
        # Sec. 3.3 dynamic k: each gt supplies as many labels as its top-q candidate IoUs sum to.
        top_ious = (ious * candidates).topk(min(top_q, A), dim=2).values  # (B, G, q)
        k = top_ious.sum(dim=2).floor()
    else:
        k = num_candidates.clamp(max=fixed_k).float()  # a gt cannot fill more candidates than it has
    k = k.clamp(min=1) * gt_mask  # (B, G); 0 for padding
    # Eq. 4: background supplies the n - sum(k) units the gts do not.
    supply = torch.cat((k, (A - k.sum(dim=1, keepdim=True)).clamp(min=0)), dim=1)  # (B, G+1)
    if compact and exclusion >= HARD_EXCLUSION:
        keep = candidates.any(dim=1)  # (B, A)
        if bool(orphans.any()):
            keep |= orphan_columns(cost, orphans, eps)
        solved = transport_compacted(cost, supply, keep, eps, iters, tol, rescale_plan)
    else:
        solved = transport(cost, supply, eps, iters, tol, rescale_plan)
    supplier = solved.supplier  # (B, A) in [0, G]
    gt_index = supplier.clamp(max=G - 1)
    positive = (supplier < G) & gt_mask.gather(1, gt_index)  # (B, A)

    matched = torch.where(positive, supplier, BACKGROUND)
    labels = torch.where(positive, gt_labels.gather(1, gt_index), C)
    box_targets = gt_boxes.gather(1, gt_index[:, :, None].expand(B, A, 4)) * positive[:, :, None]
    iou_targets = ious.gather(1, gt_index[:, None, :]).squeeze(1) * positive  # (B, A)

    num_gts = gt_mask.sum()
    num_pos = positive.sum()
    stats = {
        "num_pos": num_pos,
        "num_gts": num_gts,
        "mean_k": k.sum() / num_gts,
        "pos_per_gt": num_pos / num_gts,
        "marginal_error": solved.marginal_error,
        "num_ambiguous": solved.num_ambiguous,
        "sinkhorn_iters": torch.tensor(solved.iters, device=device),
        "compacted": torch.tensor(float(solved.compacted), device=device),
        "dynamic_k": k,
    }
    return AssignResult(matched, labels, box_targets, iou_targets, stats)


def _all_background(B: int, A: int, C: int, G: int, device: torch.device) -> AssignResult:
    """With no gts the background supplies every anchor: the exact OT solution, no solve needed."""
    zero = torch.zeros((), device=device)
    stats = {
        "num_pos": zero.long(), "num_gts": zero.long(), "mean_k": zero, "pos_per_gt": zero, "marginal_error": zero,
        "num_ambiguous": zero.long(), "sinkhorn_iters": zero.long(), "compacted": zero, "dynamic_k": torch.zeros(B, G, device=device),
    }  # fmt: skip
    return AssignResult(
        matched=torch.full((B, A), BACKGROUND, dtype=torch.long, device=device),
        labels=torch.full((B, A), C, dtype=torch.long, device=device),
        box_targets=torch.zeros(B, A, 4, device=device),
        iou_targets=torch.zeros(B, A, device=device),
        stats=stats,
    )
