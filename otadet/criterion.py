"""The training objective: assign targets (OTA or a baseline), then the paper's three losses.

    L = focal(cls, all non-ignored anchors) + 2 * GIoU(boxes, positives) + 0.5 * BCE(iou branch, positives)

each divided by the number of positives, averaged over ranks and clamped >= 1 (DETR's
num_boxes), as the official OTA code. Shapes: B=batch, A=anchor points, G=gts, C=classes.
"""

import time
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .assign import ASSIGNERS, IGNORE, AssignResult, mark_ignored, positives_per_gt
from .config import ModelConfig
from .models.detector import DenseOutputs
from .utils.dist import all_reduce_mean

__all__ = ["OTACriterion", "build_criterion"]


class OTACriterion:
    """Callable: (outputs, gt_boxes, gt_labels, gt_mask[, ignore_boxes, ignore_mask]) -> (loss, loss_items, assign_stats).

    Ignore regions (B, I, 4) with ignore_mask (B, I): background anchors inside them are left
    out of the classification loss (see otadet.assign.mark_ignored).
    assign_stats holds the assigner's own statistics plus min_pos_per_gt (fewest positives of
    any gt), amb_per_image (num_ambiguous / B) and seconds (wall time of the assigner call;
    on CUDA it includes waiting for the queued forward unless sync_timing synchronises first).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        assigner: Callable[..., AssignResult],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        giou_weight: float = 2.0,
        iou_branch_weight: float = 0.5,
        quality: str = "iou",
        sync_timing: bool = False,
    ):
        assert quality in ("iou", "centerness"), quality
        self.quality = quality
        self.num_classes = num_classes
        self.assigner = assigner
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.giou_weight = giou_weight
        self.iou_branch_weight = iou_branch_weight
        self.sync_timing = sync_timing

    def __call__(
        self,
        outputs: DenseOutputs,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        ignore_boxes: Tensor | None = None,
        ignore_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        cls_logits, boxes, iou_logits = outputs.cls_logits, outputs.boxes, outputs.iou_logits
        sync = self.sync_timing and cls_logits.is_cuda
        if sync:
            torch.cuda.synchronize(cls_logits.device)
        start = time.perf_counter()
        targets = self.assigner(
            outputs.points, outputs.strides, cls_logits.detach(), boxes.detach(), gt_boxes, gt_labels, gt_mask
        )
        if sync:
            torch.cuda.synchronize(cls_logits.device)
        seconds = time.perf_counter() - start
        if ignore_boxes is not None:
            targets = mark_ignored(targets, outputs.points, ignore_boxes, ignore_mask)
        positive = targets.matched >= 0  # (B, A)
        # Normaliser: positives averaged over ranks, at least 1.
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        # One-hot over C+1 then drop the background column: background rows are all zero.
        cls_targets = F.one_hot(targets.labels, self.num_classes + 1)[..., :-1].to(cls_logits.dtype)  # (B, A, C)
        valid = targets.matched != IGNORE  # (B, A)
        loss_cls = sigmoid_focal_loss(
            cls_logits[valid].float(), cls_targets[valid].float(), self.focal_alpha, self.focal_gamma, reduction="sum"
        )
        loss_box = generalized_box_iou_loss(
            boxes[positive].float(), targets.box_targets[positive], reduction="sum"
        )  # GIoU is scale-invariant, so stride-normalising the targets would change nothing
        if self.quality == "centerness":  # FCOS's centerness of the point in its target box
            quality_targets = centerness(outputs.points[None].expand_as(boxes[..., :2])[positive], targets.box_targets[positive])
        else:
            quality_targets = targets.iou_targets[positive]
        loss_iou = F.binary_cross_entropy_with_logits(iou_logits[positive].float(), quality_targets, reduction="sum")
        loss_cls = loss_cls / num_pos
        loss_box = self.giou_weight * loss_box / num_pos
        loss_iou = self.iou_branch_weight * loss_iou / num_pos
        loss = loss_cls + loss_box + loss_iou
        items = {"cls": loss_cls.detach(), "box": loss_box.detach(), "iou": loss_iou.detach()}
        return loss, items, {**targets.stats, **_diagnostics(targets, gt_mask, seconds)}


def centerness(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of points (P, 2) in boxes (P, 4) -> (P,).

    A point outside its box (OTA's centre prior can pick one) has a side distance clamped to 0, so centerness 0.
    """
    ltrb = torch.cat((points - boxes[:, :2], boxes[:, 2:] - points), dim=1).clamp(min=0)  # (P, 4)
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]  # (P, 2) each
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    return ratio.sqrt()


def _diagnostics(targets: AssignResult, gt_mask: Tensor, seconds: float) -> dict[str, Tensor]:
    """Statistics every assigner gets alike, from its matches: fewest positives of any real gt
    (0 without gts), ambiguous anchors per image, and the assigner's wall time."""
    counts = positives_per_gt(targets.matched, gt_mask)  # (B, G)
    # No host sync: padding reads as the largest count, and a batch without gts as 0.
    fewest = counts.masked_fill(~gt_mask, torch.iinfo(counts.dtype).max).amin() if counts.numel() else counts.new_zeros(())
    fewest = torch.where(gt_mask.any(), fewest, 0)
    out = {"min_pos_per_gt": fewest, "seconds": torch.tensor(seconds)}
    if "num_ambiguous" in targets.stats:
        out["amb_per_image"] = targets.stats["num_ambiguous"] / targets.matched.shape[0]
    return out


def build_criterion(cfg: ModelConfig, num_classes: int, *, sync_timing: bool = False) -> OTACriterion:
    knobs = dict(cfg.assigner)
    assigner = partial(ASSIGNERS[knobs.pop("name")], **knobs)
    return OTACriterion(
        num_classes=num_classes,
        assigner=assigner,
        focal_alpha=cfg.loss.focal_alpha,
        focal_gamma=cfg.loss.focal_gamma,
        giou_weight=cfg.loss.giou_weight,
        iou_branch_weight=cfg.loss.iou_branch_weight,
        quality=cfg.head.quality,
        sync_timing=sync_timing,
    )
