"""From dense outputs to detections: scores, then per-class NMS. Shared by val, predict and export.

`nms` loops over the images of a batch (val, predict); `padded_nms` is its fixed-shape
form for the whole batch at once, which the exporter embeds in the ONNX / TorchScript graph.

Score (paper Sec. 4): sqrt(sigmoid(cls) * sigmoid(iou)), the geometric mean of the class
probability and the predicted IoU. Shapes: B=batch, A=anchor points, C=classes, N=detections, K=candidates per image, M=kept.
"""

import torch
from torch import Tensor
from torchvision.ops import batched_nms
from torchvision.ops import nms as nms_op

__all__ = ["dense_scores", "nms", "padded_nms"]


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


def padded_nms(
    boxes: Tensor,
    scores: Tensor,
    image_size: Tensor,
    *,
    conf: float,
    iou: float,
    max_det: int,
    pre_nms_topk: int = 1000,
) -> Tensor:
    """`nms` for a whole batch in fixed-shape tensor ops, the form that exports (ONNX, TorchScript).

    The same detections as `nms(..., image_sizes=image_size for every image)`: the top
    `pre_nms_topk` (anchor, class) candidates per image, clipped to the image, class-aware NMS
    (one torchvision.ops.nms call: each (image, class) group is shifted to its own region, the
    coordinate trick of batched_nms), scores > conf, the best max_det per image.

    Args:
        boxes: (B, A, 4) xyxy; scores: (B, A, C); image_size: (2,) (h, w) to clip to.
    Returns:
        (B, max_det, 6) x1 y1 x2 y2 score class by descending score, padded with rows of zeros.
    """
    b, c = scores.shape[0], scores.shape[2]
    k = pre_nms_topk
    # ceil(K / C) all-zero anchors appended so that topk(K) exists for any A: their scores fall
    # below any conf and they are dropped after NMS.
    pad = -(-k // c)
    scores = torch.cat((scores, torch.zeros_like(scores[:, :1]).expand(-1, pad, -1)), dim=1)  # (B, A + pad, C)
    boxes = torch.cat((boxes, torch.zeros_like(boxes[:, :1]).expand(-1, pad, -1)), dim=1)  # (B, A + pad, 4)
    top_scores, top = scores.flatten(1).topk(k, dim=1)  # (B, K) over (anchor, class) pairs
    anchor = torch.div(top, c, rounding_mode="floor")  # (B, K)
    label = top % c  # (B, K)
    candidates = boxes.gather(1, anchor[..., None].expand(-1, -1, 4))  # (B, K, 4)
    h, w = image_size[0].to(boxes.dtype), image_size[1].to(boxes.dtype)
    limit = torch.stack((w, h, w, h))  # (4,)
    candidates = torch.minimum(candidates.clamp(min=0), limit)
    group = torch.arange(b, device=boxes.device)[:, None] * c + label  # (B, K) one group per (image, class)
    shift = group.to(boxes.dtype)[..., None] * (torch.maximum(w, h) + 1)  # (B, K, 1)
    flat_boxes, flat_scores = candidates.flatten(0, 1), top_scores.flatten()  # (B*K, 4), (B*K,)
    keep = nms_op((flat_boxes + shift.flatten(0, 1)).float(), flat_scores.float(), iou)  # (M,)
    keep = keep[flat_scores[keep] > conf]  # by descending score over the whole batch
    image = torch.div(keep, k, rounding_mode="floor")  # (M,)
    one_hot = (image[:, None] == torch.arange(b, device=boxes.device)).long()  # (M, B)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (M,) place of each kept box within its image
    within = rank < max_det
    keep, image, rank = keep[within], image[within], rank[within]
    rows = torch.cat((flat_boxes[keep], flat_scores[keep, None], label.flatten()[keep, None].to(boxes.dtype)), dim=1)
    out = boxes.new_zeros(b * max_det, 6).index_put((image * max_det + rank,), rows)  # (B*max_det, 6)
    return out.view(b, max_det, 6)
