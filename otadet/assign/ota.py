"""OTA: Optimal Transport Assignment (Ge et al., CVPR 2021), batched over images.

Each gt is a supplier of k_i units of "positive label", the background a supplier of the
rest; every anchor point demands one unit. The cheapest way to ship them (entropic OT,
solved by Sinkhorn) decides which gt, if any, each anchor learns from.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes. Target convention: see otadet.assign._types.
"""

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ._boxes import centre_candidates, near_centre, pairwise_iou
from ._types import BACKGROUND, AssignResult
from .sinkhorn import sinkhorn

__all__ = ["ota", "classification_costs"]


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
    center_radius: float = 2.5,
    candidate_margin: float = 0.01,
    non_candidate_cost: float = 1e6,
    top_q: int = 20,
    eps: float = 0.1,
    iters: int = 50,
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
        iou_weight: alpha in the cost, cls + alpha * (-log IoU)  (paper Eq. 7: 1.5).
        center_radius, candidate_margin: the official code's candidate rule (see centre_candidates).
        non_candidate_cost: added to non-candidates, which excludes them in practice.
        top_q: dynamic k = max(1, floor(sum of the top-q IoUs))  (paper Sec. 3.3: q = 20).
        eps, iters: Sinkhorn regularisation and iterations (official: 0.1, 50).
        focal_alpha, focal_gamma: the focal cost, as the focal loss.
        rescale_plan: divide each supplier's row by its max before the argmax (official code).
        compact: solve only over anchors that are a candidate of some gt (same result, faster).
    Returns:
        AssignResult; stats holds num_pos, num_gts, mean_k, pos_per_gt, marginal_error.
    """
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    # Assignment is done in float32 whatever the autocast state.
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    device = cls_logits.device
    if G == 0 or not bool(gt_mask.any()):
        return _all_background(B, A, C, device)

    gt_cost, background_cost = classification_costs(cls_logits, gt_labels, alpha=focal_alpha, gamma=focal_gamma)
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (B, G, A)
    candidates = centre_candidates(points, strides, gt_boxes, radius=center_radius, margin=candidate_margin)
    candidates &= gt_mask[:, :, None]  # (B, G, A)
    # Eq. 7: c_ij = L_cls + alpha * L_reg, plus the centre prior as a hard exclusion.
    cost = gt_cost + iou_weight * -torch.log(ious + 1e-8) + non_candidate_cost * (~candidates)
    cost = torch.cat((cost, background_cost[:, None, :]), dim=1)  # (B, G+1, A)

    # Sec. 3.3 dynamic k: each gt supplies as many labels as its top-q candidate IoUs sum to.
    top_ious = (ious * candidates).topk(min(top_q, A), dim=2).values  # (B, G, q)
    dynamic_k = top_ious.sum(dim=2).floor().clamp(min=1) * gt_mask  # (B, G); 0 for padding
    # Eq. 4: background supplies the n - sum(k) units the gts do not.
    supply = torch.cat((dynamic_k, A - dynamic_k.sum(dim=1, keepdim=True)), dim=1)  # (B, G+1)
    if compact:
        # Columns to solve over: every candidate, and for a gt with no candidate at all (smaller
        # than the point spacing), the points near its centre, where its +1e6 row sends its units.
        orphans = gt_mask & ~candidates.any(dim=2)  # (B, G)
        keep = candidates.any(dim=1)  # (B, A)
        if bool(orphans.any()):
            keep |= (near_centre(points, strides, gt_boxes, radius=center_radius) & orphans[:, :, None]).any(dim=1)
        supplier, marginal_error = _transport_compacted(cost, supply, keep, eps, iters, rescale_plan)
    else:
        supplier, marginal_error = _transport(cost, supply, eps, iters, rescale_plan)
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
        "mean_k": dynamic_k.sum() / num_gts,
        "pos_per_gt": num_pos / num_gts,
        "marginal_error": marginal_error,
    }
    return AssignResult(matched, labels, box_targets, iou_targets, stats)


def _transport(cost: Tensor, supply: Tensor, eps: float, iters: int, rescale: bool) -> tuple[Tensor, Tensor]:
    """Sinkhorn over every anchor; each anchor's supplier (B, A) in [0, G] (G = background)."""
    demand = cost.new_ones(cost.shape[0], cost.shape[2])  # (B, A): one unit per anchor
    plan = sinkhorn(cost, supply, demand, eps=eps, iters=iters)  # (B, G+1, A)
    marginal_error = (plan.sum(dim=1) - demand).abs().amax()
    if rescale:
        # Official code: scale each supplier's row so its largest share is 1.
        row_max = plan.amax(dim=2, keepdim=True)
        plan = torch.where(row_max > 0, plan / row_max, plan)
    return plan.argmax(dim=1), marginal_error


def _transport_compacted(
    cost: Tensor, supply: Tensor, keep: Tensor, eps: float, iters: int, rescale: bool
) -> tuple[Tensor, Tensor]:
    """The same assignment as _transport, solving over the K anchors in `keep` (B, A).

    `keep` holds every anchor some gt can send to. Any other anchor costs +1e6 from every gt
    that has candidates elsewhere, so the gts send it exactly 0 (exp(-1e7) underflows) and it
    is background. Dropped together, such anchors act on the
    background row only through their count D: each column j takes g_j = -(C_bg,j/eps + f_bg),
    so they add D*exp(-f_bg) to the background row's sum. One virtual column of demand D that
    only the background reaches reproduces that term, so the iterates equal the full
    problem's, not only the limit. The exception is a gt with no candidate at all: its row is
    +1e6 everywhere, and where its costs are flat (its predicted boxes miss it) it can also
    reach anchors outside `keep`; benchmarks/assigner.py counts the few anchors that differ.
    keep (B, A) bool -> supplier (B, A), marginal error.
    """
    B, M, A = cost.shape  # M = G+1 suppliers
    K = max(int(keep.sum(dim=1).max()), 1)
    # Kept anchors first (stable: in anchor order), padded to the batch's largest K.
    order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
    kept = keep.gather(1, order)  # (B, K) False = padding column
    dropped = (A - keep.sum(dim=1)).to(cost.dtype)  # (B,)
    cost_k = torch.cat((cost.gather(2, order[:, None, :].expand(B, M, K)), cost.new_zeros(B, M, 1)), dim=2)
    demand = torch.cat((kept.to(cost.dtype), dropped[:, None]), dim=1)  # (B, K+1)
    mask = torch.ones(B, M, K + 1, dtype=torch.bool, device=cost.device)
    mask[:, :-1, K] = False  # the virtual column: background only
    plan = sinkhorn(cost_k, supply, demand, eps=eps, iters=iters, mask=mask)  # (B, G+1, K+1)
    marginal_error = ((plan.sum(dim=1) - demand).abs() * (demand > 0)).amax()
    plan = plan[:, :, :K]
    if rescale:
        row_max = plan.amax(dim=2, keepdim=True)  # (B, G+1, 1)
        # Each dropped anchor is wholly background (share 1), so the background row's max is 1.
        row_max[:, -1, 0] = torch.where(dropped > 0, row_max[:, -1, 0].clamp(min=1.0), row_max[:, -1, 0])
        plan = torch.where(row_max > 0, plan / row_max, plan)
    supplier = torch.full((B, A), M - 1, dtype=torch.long, device=cost.device)  # background
    supplier.scatter_(1, order, torch.where(kept, plan.argmax(dim=1), M - 1))
    return supplier, marginal_error


def _all_background(B: int, A: int, C: int, device: torch.device) -> AssignResult:
    """With no gts the background supplies every anchor: the exact OT solution, no solve needed."""
    zero = torch.zeros((), device=device)
    return AssignResult(
        matched=torch.full((B, A), BACKGROUND, dtype=torch.long, device=device),
        labels=torch.full((B, A), C, dtype=torch.long, device=device),
        box_targets=torch.zeros(B, A, 4, device=device),
        iou_targets=torch.zeros(B, A, device=device),
        stats={"num_pos": zero.long(), "num_gts": zero.long(), "mean_k": zero, "pos_per_gt": zero, "marginal_error": zero},
    )
