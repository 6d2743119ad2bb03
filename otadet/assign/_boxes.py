"""Batched box geometry for the assigners.

torchvision.ops.box_iou is 2-D only ([N, 4] x [M, 4]); a loop over images costs a Python
iteration per image and torch.vmap over it is ~3x slower than this broadcast form. Each
coordinate is handled separately so that nothing of shape (B, G, A, 4) is materialised.
"""

import torch
from torch import Tensor

__all__ = [
    "pairwise_iou",
    "pairwise_giou",
    "near_centre",
    "centre_candidates",
    "points_in_boxes",
    "nearest_per_level",
    "aligned_iou",
    "inside_boxes",
    "anchor_boxes",
]


def _pairwise_overlap(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Intersection and union areas of every box in boxes1 (..., G, 4) with every box in boxes2
    (..., A, 4), xyxy -> inter (..., G, A), union (..., G, A), and the broadcast views
    b1 (..., G, 1, 4), b2 (..., 1, A, 4)."""
    b1 = boxes1[..., :, None, :]  # (..., G, 1, 4)
    b2 = boxes2[..., None, :, :]  # (..., 1, A, 4)
    w = (b1[..., 2].minimum(b2[..., 2]) - b1[..., 0].maximum(b2[..., 0])).clamp_(min=0)
    h = (b1[..., 3].minimum(b2[..., 3]) - b1[..., 1].maximum(b2[..., 1])).clamp_(min=0)
    inter = w * h  # (..., G, A)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]).clamp(min=0) * (b2[..., 3] - b2[..., 1]).clamp(min=0)
    return inter, area1 + area2 - inter, b1, b2


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of every box in boxes1 (..., G, 4) with every box in boxes2 (..., A, 4) -> (..., G, A). xyxy."""
    inter, union, _, _ = _pairwise_overlap(boxes1, boxes2)
    return inter / (union + eps)


def near_centre(points: Tensor, strides: Tensor, boxes: Tensor, *, radius: float) -> Tensor:
    """Whether each point (A, 2) lies in the square of half-size radius*stride around each box's
    centre (..., G, 4) -> (..., G, A)."""
    x, y = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # each (..., G, 1)
    half = radius * strides  # (A,)
    return ((x - (x1 + x2) / 2).abs() < half) & ((y - (y1 + y2) / 2).abs() < half)


def centre_candidates(points: Tensor, strides: Tensor, boxes: Tensor, *, radius: float, margin: float) -> Tensor:
    """The official OTA/FCOS candidate rule -> (..., G, A) bool.

    A point (A, 2) is a candidate of a gt box (..., G, 4) when it lies inside the box by more
    than `margin` pixels AND inside the square of half-size radius*stride around the box
    centre. (The official code clips that square to the box; with the inside test alongside,
    clipping changes nothing, so it is skipped.)
    """
    x, y = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # each (..., G, 1)
    inside = (x - x1 > margin) & (y - y1 > margin) & (x2 - x > margin) & (y2 - y > margin)
    return inside & near_centre(points, strides, boxes, radius=radius)


def points_in_boxes(points: Tensor, boxes: Tensor, mask: Tensor) -> Tensor:
    """Whether each point (A, 2) falls inside any of the boxes (B, I, 4) kept by mask (B, I) -> (B, A)."""
    x, y = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # each (B, I, 1)
    inside = (x >= x1) & (y >= y1) & (x <= x2) & (y <= y2)  # (B, I, A)
    return (inside & mask[:, :, None]).any(dim=1)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of boxes1[..., i] with boxes2[..., i] (..., 4) -> (...,), the same formula as pairwise_iou. xyxy."""
    w = (boxes1[..., 2].minimum(boxes2[..., 2]) - boxes1[..., 0].maximum(boxes2[..., 0])).clamp(min=0)
    h = (boxes1[..., 3].minimum(boxes2[..., 3]) - boxes1[..., 1].maximum(boxes2[..., 1])).clamp(min=0)
    inter = w * h
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    return inter / (area1 + area2 - inter + eps)


def inside_boxes(points: Tensor, boxes: Tensor, *, margin: float = 0.0) -> Tensor:
    """Whether each point (A, 2) lies inside each box (..., G, 4) by more than `margin` pixels -> (..., G, A)."""
    x, y = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # each (..., G, 1)
    return (x - x1 > margin) & (y - y1 > margin) & (x2 - x > margin) & (y2 - y > margin)


def anchor_boxes(points: Tensor, strides: Tensor, scale: float) -> Tensor:
    """One square anchor per point (A, 2), side scale * stride (A,) -> (A, 4) xyxy (ATSS's anchors,
    and the delta box coder's: otadet.models.box_coder re-exports it)."""
    half = (scale * strides / 2)[:, None]  # (A, 1)
    return torch.cat((points - half, points + half), dim=1)


def pairwise_giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """Generalised IoU (as torchvision.ops.generalized_box_iou, batched) of boxes1 (..., G, 4)
    with boxes2 (..., A, 4) -> (..., G, A). xyxy."""
    inter, union, b1, b2 = _pairwise_overlap(boxes1, boxes2)
    hull = (b1[..., 2].maximum(b2[..., 2]) - b1[..., 0].minimum(b2[..., 0])) * (
        b1[..., 3].maximum(b2[..., 3]) - b1[..., 1].minimum(b2[..., 1])
    )  # (..., G, A) area of the smallest enclosing box
    return inter / (union + eps) - (hull - union) / (hull + eps)


def nearest_per_level(points: Tensor, strides: Tensor, boxes: Tensor, *, count: int) -> Tensor:
    """The `count` points (A, 2) nearest each box centre (..., G, 4) on every FPN level -> (..., G, A) bool.

    Levels are the runs of equal stride in `strides` (A,), as anchor_points lays them out. One
    top-k per level over all boxes at once; a level with fewer points gives all of them.
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (..., G, 2)
    chosen = points.new_zeros((*boxes.shape[:-1], points.shape[0]), dtype=torch.bool)  # (..., G, A)
    _, counts = torch.unique_consecutive(strides, return_counts=True)
    start = 0
    for n in counts.tolist():  # one iteration per level
        level = points[start : start + n]  # (n, 2)
        dist = (centre[..., None, 0] - level[:, 0]).square() + (centre[..., None, 1] - level[:, 1]).square()  # (..., G, n)
        nearest = dist.topk(min(count, n), dim=-1, largest=False).indices  # (..., G, count)
        chosen[..., start : start + n].scatter_(-1, nearest, True)
        start += n
    return chosen
