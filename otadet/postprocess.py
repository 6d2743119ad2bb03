"""From dense outputs to detections: scores, then per-class NMS. Shared by val, predict and export.

Score (paper Sec. 4): sqrt(sigmoid(cls) * sigmoid(iou)), the geometric mean of the class
probability and the predicted IoU. Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["dense_scores", "nms"]


def dense_scores(cls_logits: Tensor, iou_logits: Tensor) -> Tensor:
    """(B, A, C) and (B, A) logits -> (B, A, C) detection scores."""
    return torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(iou_logits)[..., None])


def nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    conf: float,
    iou: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
    classes: list[int] | None = None,
    image_sizes: Tensor | None = None,
) -> list[Tensor]:
    """Per image: threshold, keep the top candidates, clip, class-aware NMS, keep max_det.

    Args:
        boxes: (B, A, 4) xyxy; scores: (B, A, C).
        image_sizes: optional (B, 2) (h, w) of the unpadded input, to clip boxes to.
        classes: keep only these class indices.
    Returns:
        B tensors (N, 6): x1 y1 x2 y2 score class, by descending score.
    """
    results = []
    for i in range(boxes.shape[0]):
        image_scores = scores[i]
        if classes is not None:
            keep_cls = torch.zeros(image_scores.shape[1], dtype=torch.bool, device=scores.device)
            keep_cls[classes] = True
            image_scores = image_scores * keep_cls
        flat = image_scores.flatten()  # (A*C,) candidate = (anchor, class)
        candidates = (flat > conf).nonzero().squeeze(1)
        top = flat[candidates].topk(min(pre_nms_topk, candidates.numel()))
        candidates = candidates[top.indices]
        anchor, label = candidates // image_scores.shape[1], candidates % image_scores.shape[1]
        image_boxes = boxes[i, anchor]
        if image_sizes is not None:
            h, w = image_sizes[i].tolist()
            image_boxes = torch.stack(
                (
                    image_boxes[:, 0].clamp(0, w),
                    image_boxes[:, 1].clamp(0, h),
                    image_boxes[:, 2].clamp(0, w),
                    image_boxes[:, 3].clamp(0, h),
                ),
                dim=1,
            )
        keep = batched_nms(image_boxes.float(), top.values.float(), label, iou)[:max_det]
        results.append(torch.cat((image_boxes[keep], top.values[keep, None], label[keep, None].to(boxes.dtype)), dim=1))
    return results
