"""OTA's cost terms (paper Eq. 7): the focal classification cost of a one-hot target, as
[G, A] gathers, and the IoU loss of the predicted boxes.

Shapes: B=batch, A (or N)=anchor points, G=gts, C=classes.
"""

import torch
from torch import Tensor
import torch.nn.functional as F

from ..knobs import IOU_COSTS, IouCost
from ._boxes import pairwise_giou

__all__ = ["IouCost", "IOU_COSTS", "focal_terms", "negative_focal_term", "classification_costs", "relative_class_cost", "regression_cost"]


def focal_terms(logits: Tensor, *, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
    """The focal loss of each logit for target 1 (positive) and target 0 (negative), elementwise.

    As torchvision.ops.sigmoid_focal_loss, in fewer passes: with p = sigmoid(x),
    positive = alpha (1-p)^gamma softplus(-x), negative = (1-alpha) p^gamma softplus(x).
    """
    p = torch.sigmoid(logits)
    positive = alpha * (1 - p).pow(gamma) * F.softplus(-logits)
    return positive, negative_focal_term(logits, p, alpha=alpha, gamma=gamma)


def negative_focal_term(logits: Tensor, p: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """(1-alpha) p^gamma softplus(x): the focal loss of each logit for target 0, p = sigmoid(logits)."""
    return (1 - alpha) * p.pow(gamma) * F.softplus(logits)


def classification_costs(
    cls_logits: Tensor, gt_labels: Tensor, *, alpha: float, gamma: float
) -> tuple[Tensor, Tensor]:
    """Focal cost of each anchor predicting each gt's one-hot target, and background.

    The focal loss of a one-hot target summed over C classes equals the all-negative sum
    (the background cost) minus the negative term at the gt's class plus the positive term
    there, so the gt costs are (B, G, N) gathers, never a (B, G, N, C) tensor.

    cls_logits (B, N, C), gt_labels (B, G) -> (gt_cost (B, G, N), background_cost (B, N)).
    """
    # The (B, N, C) pass: the negative terms only (the positive ones are needed at the gt classes only).
    background_cost = negative_focal_term(cls_logits, torch.sigmoid(cls_logits), alpha=alpha, gamma=gamma).sum(dim=-1)  # (B, N)
    return background_cost[:, None, :] + relative_class_cost(cls_logits, gt_labels, alpha=alpha, gamma=gamma), background_cost


def relative_class_cost(cls_logits: Tensor, gt_labels: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """gt cost minus background cost: the positive minus the negative focal term at the gt's class.
    cls_logits (B, N, C), gt_labels (B, G) -> (B, G, N)."""
    B, N, _ = cls_logits.shape
    index = gt_labels[:, :, None].expand(B, gt_labels.shape[1], N)  # (B, G, N)
    positive, negative = focal_terms(cls_logits.transpose(1, 2).gather(1, index), alpha=alpha, gamma=gamma)
    return positive - negative


def regression_cost(ious: Tensor, gt_boxes: Tensor, pred_boxes: Tensor, form: str) -> Tensor:
    """IoU loss of every predicted box (B, A, 4) for every gt (B, G, 4) -> (B, G, A).
    'log': -log IoU (official code), 'linear': 1 - IoU, 'giou': 1 - GIoU."""
    if form == "log":
        return -torch.log(ious + 1e-8)
    if form == "linear":
        return 1.0 - ious
    return 1.0 - pairwise_giou(gt_boxes, pred_boxes)
