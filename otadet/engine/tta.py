"""Test-time augmentation (`augment=True` in val and predict): ATSS-style scales and flips, merged before NMS.

The batch the validator or predictor already made (images resized to `imgsz`, zero-padded)
is run again at every ratio r in TTA_RATIOS — ATSS's test scales (400, 500, ..., 1200) over
its 800 — each plain and mirrored left-right: 18 passes. A pass resizes each image's
unpadded region by r (bilinear, half-pixel centres as cv2.INTER_LINEAR) so both sides, and
with them the `max_size` cap, scale by r: a model at imgsz 256 tests at 128..384, one at 800
at 400..1200 (max 667..2000). Ratio 1 without the flip is exactly the plain forward, so a
caller that already ran it passes its outputs (`plain=`) and 17 passes remain.

Every pass's dense boxes are mirrored back if flipped and divided by the exact per-axis
resize ratio, into the frame of the input batch (the caller maps that frame to original
pixels as it does without TTA). Optionally (on by default) a pass only keeps boxes whose
sqrt(area) in its own input lies in its ATSS size range (TTA_SIZE_RANGES, the ranges of ATSS's
box-voting TTA, given at 800 and scaled by the image's shorter side / 800): small inputs
keep only large objects, large inputs only small ones. Each pass contributes its
`pre_nms_topk` best anchors; the union goes through ONE class-aware NMS with
pre_nms_topk x passes candidates (ATSS instead runs NMS per pass and once more on the union).
Inputs are re-sampled from the already-resized batch rather than from the original files:
one resize more (a slight blur on upscaled passes) for a few-line hook in val and predict.
Shapes: B=batch, A=anchor points of one pass, K=kept anchors over all passes, C=classes.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..datasets.loader import padded_side
from ..models.detector import DenseOutputs
from ..postprocess import dense_scores, nms

__all__ = ["TTA_RATIOS", "TTA_SIZE_RANGES", "TTAPass", "tta_passes", "resize_batch", "augmented_dense", "tta_detect"]

REFERENCE_SIZE = 800  # the shorter side ATSS's scales and ranges are given at
TTA_RATIOS = tuple(s / REFERENCE_SIZE for s in (400, 500, 600, 700, 800, 900, 1000, 1100, 1200))
# Per ratio: (min, max) sqrt(box area) in that pass's input pixels, at a shorter side of 800.
TTA_SIZE_RANGES = ((96, math.inf), (96, math.inf), (64, math.inf), (64, math.inf), (0, math.inf),
                   (0, math.inf), (0, math.inf), (0, 256), (0, 256))  # fmt: skip


class TTAPass(NamedTuple):
    ratio: float  # resize factor relative to the input batch
    flip: bool  # mirrored left-right
    size_range: tuple[float, float]  # (min, max) sqrt(area) at a shorter side of 800; (0, inf) = all


def tta_passes(
    ratios: tuple[float, ...] = TTA_RATIOS, flip: bool = True, size_ranges: tuple | None = TTA_SIZE_RANGES
) -> list[TTAPass]:
    """The passes: every ratio, plain then (if flip) mirrored, with its size range (all sizes if None)."""
    if size_ranges is not None and len(size_ranges) != len(ratios):
        raise ValueError(f"tta: {len(size_ranges)} size ranges for {len(ratios)} ratios")
    ranges = size_ranges if size_ranges is not None else [(0.0, math.inf)] * len(ratios)
    return [TTAPass(r, f, tuple(rng)) for r, rng in zip(ratios, ranges) for f in ((False, True) if flip else (False,))]


def resize_batch(images: Tensor, sizes: Tensor, ratio: float, flip: bool = False) -> tuple[Tensor, Tensor]:
    """Each image's unpadded (h, w) region of `images` (B, 3, H, W), resized by `ratio` and
    mirrored if `flip`, zero-padded again to a multiple of 32.

    Sizes round as transforms.Resize does. Returns (B, 3, H', W') and the new (B, 2) int64 (h, w).
    """
    hw = [(int(h), int(w)) for h, w in sizes.tolist()]
    new = [(max(int(round(h * ratio)), 1), max(int(round(w * ratio)), 1)) for h, w in hw]
    height, width = padded_side(max(h for h, _ in new)), padded_side(max(w for _, w in new))  # as the loader pads
    out = images.new_zeros((images.shape[0], images.shape[1], height, width))  # (B, 3, H', W')
    for k, ((h, w), (nh, nw)) in enumerate(zip(hw, new)):  # per image: each has its own size
        region = images[k : k + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            region = F.interpolate(region, size=(nh, nw), mode="bilinear", align_corners=False)
        out[k, :, :nh, :nw] = region[0].flip(-1) if flip else region[0]
    return out, torch.tensor(new, dtype=torch.int64, device=images.device)


@torch.no_grad()
def augmented_dense(
    model: nn.Module,
    images: Tensor,
    sizes: Tensor,
    *,
    passes: list[TTAPass] | None = None,
    topk: int = 1000,
    plain: DenseOutputs | None = None,
) -> tuple[Tensor, Tensor]:
    """Boxes and scores of every pass, in the frame of `images`, concatenated.

    Args:
        images: (B, 3, H, W) the normalised, padded input batch; sizes: (B, 2) its unpadded (h, w).
        passes: tta_passes() by default; topk: anchors kept per pass (by best class score).
        plain: model(images) if already computed: it stands for the ratio-1 unflipped pass.
    Returns:
        boxes (B, K, 4) xyxy and scores (B, K, C) (postprocess.dense_scores, 0 outside a
        pass's size range), K = sum over passes of min(topk, A).
    """
    passes = tta_passes() if passes is None else passes
    base = sizes.to(device=images.device, dtype=torch.float32)  # (B, 2) h, w
    # Size ranges are given at a shorter side of 800: scale them to each image's.
    range_scale = base.min(dim=1).values / REFERENCE_SIZE  # (B,)
    all_boxes, all_scores = [], []
    for p in passes:
        inputs, new = resize_batch(images, sizes, p.ratio, p.flip)
        outputs = plain if plain is not None and p.ratio == 1 and not p.flip else model(inputs)
        scores = dense_scores(outputs.cls_logits, outputs.iou_logits).float()  # (B, A, C)
        boxes = outputs.boxes.float()  # (B, A, 4) in this pass's input pixels
        new = new.to(torch.float32)  # (B, 2) h, w of this pass
        if p.flip:  # the image was mirrored: x -> w - x, so x1, x2 swap
            w = new[:, 1, None]  # (B, 1)
            boxes = torch.stack((w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]), dim=-1)
        lo, hi = p.size_range
        if lo > 0 or math.isfinite(hi):
            side = ((boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)).sqrt()
            keep = (side >= lo * range_scale[:, None]) & (side <= hi * range_scale[:, None])  # (B, A)
            scores = scores * keep[..., None]
        # Exact per-axis ratio of the rounded sizes, back to the input batch's frame.
        scale = (base / new).flip(-1).repeat(1, 2)[:, None, :]  # (B, 1, 4) w, h, w, h
        boxes = boxes * scale
        best = scores.max(dim=-1).values  # (B, A)
        index = best.topk(min(topk, best.shape[1]), dim=1).indices  # (B, k)
        all_boxes.append(boxes.gather(1, index[..., None].expand(-1, -1, 4)))
        all_scores.append(scores.gather(1, index[..., None].expand(-1, -1, scores.shape[-1])))
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)  # (B, K, 4), (B, K, C)


@torch.no_grad()
def tta_detect(
    model: nn.Module,
    images: Tensor,
    sizes: Tensor,
    *,
    conf: float,
    iou: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
    classes: list[int] | None = None,
    passes: list[TTAPass] | None = None,
    plain: DenseOutputs | None = None,
) -> list[Tensor]:
    """Detections of the augmented passes after one NMS over their union, as postprocess.nms gives:
    B tensors (N, 6) x1 y1 x2 y2 score class in the frame of `images`, clipped to `sizes`.
    `plain`: model(images), if the caller has it (saves one pass)."""
    passes = tta_passes() if passes is None else passes
    boxes, scores = augmented_dense(model, images, sizes, passes=passes, topk=pre_nms_topk, plain=plain)
    return nms(
        boxes, scores, conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk * len(passes),
        classes=classes, image_sizes=sizes.to(device=boxes.device, dtype=boxes.dtype),
    )  # fmt: skip
