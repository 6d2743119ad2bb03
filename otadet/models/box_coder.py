"""Box coders: how the regression branch's four numbers become an xyxy box in input pixels.

- ltrb (FCOS): non-negative distances from the point to the box's left, top, right, bottom.
- delta (RetinaNet / detectron2 / torchvision BoxCoder with weights (1, 1, 1, 1)): the offset of
  the box centre in anchor widths and the log of its size over the anchor's, from one square
  anchor per point of side anchor_scale * stride.
Both decode inside the network, so the dense outputs, the assigners, the losses, postprocess and
the ONNX export are the same for either. Shapes: B=batch, A=anchor points.
"""

import math

import torch
from torch import Tensor

from ..assign._boxes import anchor_boxes  # one definition, shared with ATSS

__all__ = ["anchor_boxes", "decode_ltrb", "encode_deltas", "decode_deltas", "DELTA_CLAMP"]

# Largest dw, dh decoded: boxes at most 1000/16 times their anchor (detectron2, torchvision).
DELTA_CLAMP = math.log(1000.0 / 16)


def decode_ltrb(ltrb: Tensor, points: Tensor) -> Tensor:
    """Distances (B, A, 4) from the points (A, 2) -> boxes (B, A, 4) xyxy."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)


def encode_deltas(boxes: Tensor, anchors: Tensor) -> Tensor:
    """The deltas (..., 4) that turn anchors (..., 4) into boxes (..., 4); both xyxy."""
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_ctr = anchors[..., :2] + 0.5 * anchor_wh
    wh = boxes[..., 2:] - boxes[..., :2]
    ctr = boxes[..., :2] + 0.5 * wh
    return torch.cat(((ctr - anchor_ctr) / anchor_wh, torch.log(wh / anchor_wh)), dim=-1)


def decode_deltas(deltas: Tensor, anchors: Tensor, clamp: float = DELTA_CLAMP) -> Tensor:
    """Boxes (..., 4) xyxy from deltas (..., 4) = (dx, dy, dw, dh) on anchors (..., 4) xyxy.

    Decoded in float32 whatever the autocast state: exp(dw) of a half-precision delta overflows.
    """
    deltas = deltas.float()
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_ctr = anchors[..., :2] + 0.5 * anchor_wh
    ctr = deltas[..., :2] * anchor_wh + anchor_ctr
    half = 0.5 * torch.exp(deltas[..., 2:].clamp(max=clamp)) * anchor_wh
    return torch.cat((ctr - half, ctr + half), dim=-1)
