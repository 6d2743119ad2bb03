"""The detector network: backbone -> FPN (P3-P7) -> shared head -> dense outputs.

It returns the same raw dense outputs in training and evaluation; losses live in the
criterion and NMS in postprocess, so the network exports to ONNX unchanged. The regression
is decoded to xyxy boxes here by the box coder (models.box_coder): FCOS distances from the
point (ltrb), or RetinaNet deltas from one square anchor centred on the point (delta).
Shapes: B=batch, A=anchor points over all levels, C=classes.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .backbone import ResNetBackbone
from .box_coder import anchor_boxes, decode_deltas, decode_ltrb
from .head import OTAHead
from .input_norm import InputNorm

__all__ = ["DenseOutputs", "OTADetector", "anchor_points"]

STRIDES = (8, 16, 32, 64, 128)  # P3-P7


class DenseOutputs(NamedTuple):
    cls_logits: Tensor  # (B, A, C)
    boxes: Tensor  # (B, A, 4) xyxy in input pixels, decoded from the regression branch
    iou_logits: Tensor  # (B, A) the IoU branch
    points: Tensor  # (A, 2) anchor points x y in input pixels
    strides: Tensor  # (A,) stride of each point's level


def anchor_points(features: list[Tensor], strides: tuple[int, ...], offset: float = 0.5) -> tuple[Tensor, Tensor]:
    """Points of the feature-map cells, level by level, row-major: (A, 2) points and (A,) strides.

    Cell (i, j) at stride s sits at ((j + offset) * s, (i + offset) * s): its centre for offset
    0.5 (FCOS; s//2 for the even strides), its corner for 0.0 (torchvision's FCOS, cvpods).
    """
    points, point_strides = [], []
    for x, stride in zip(features, strides):
        h, w = x.shape[-2:]
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + offset) * stride
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1))
        point_strides.append(torch.full_like(grid_x.reshape(-1), stride))
    return torch.cat(points), torch.cat(point_strides)


class OTADetector(nn.Module):
    """One-stage detector trained with OTA; see build_detector for the parts.

    box_coder "ltrb" is the FCOS form (anchor-free); "delta" the RetinaNet form with one square
    anchor of side anchor_scale * stride per point, whose centre is the point (the head must then
    return raw deltas: OTAHead(reg_activation="none")).
    """

    def __init__(
        self,
        *,
        backbone: ResNetBackbone,
        fpn: FeaturePyramidNetwork,
        head: OTAHead,
        num_classes: int,
        box_coder: str = "ltrb",
        anchor_scale: float = 8.0,
        point_offset: float = 0.5,
        input_norm: InputNorm | None = None,
    ):
        super().__init__()
        assert box_coder in ("ltrb", "delta"), box_coder
        self.input_norm = input_norm  # None: the model takes the pipeline's convention as it is
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.num_classes = num_classes
        self.strides = STRIDES
        self.box_coder = box_coder
        self.anchor_scale = anchor_scale
        self.point_offset = point_offset

    def forward(self, images: Tensor) -> DenseOutputs:
        if self.input_norm is not None:
            images = self.input_norm(images)
        features = list(self.fpn(self.backbone(images)).values())  # P3..P7
        cls_logits, regression, iou_logits = self.head(features, self.strides)  # regression (B, A, 4)
        points, strides = anchor_points(features, self.strides, self.point_offset)
        if self.box_coder == "delta":
            boxes = decode_deltas(regression, anchor_boxes(points, strides, self.anchor_scale))  # (B, A, 4)
        else:
            boxes = decode_ltrb(regression, points)  # (B, A, 4)
        return DenseOutputs(cls_logits, boxes, iou_logits, points, strides)


def build_fpn(in_channels: list[int], channels: int) -> FeaturePyramidNetwork:
    """torchvision's FPN over C3-C5, with P6/P7 by stride-2 convs from P5 (FCOS)."""
    return FeaturePyramidNetwork(in_channels, channels, extra_blocks=P6P7(channels, channels))


class P6P7(LastLevelP6P7):
    """torchvision's LastLevelP6P7 (same weights, same keys), except that under CPU autocast a
    P6/P7 convolution whose input is narrower or shorter than its stride runs in float32.

    oneDNN's bf16 weight gradient of a stride-2 convolution over an input of width 1 is
    garbage (torch 2.14.1 on an AMD Zen 4 CPU with AVX512-BF16: inf/NaN or values ~1e37 in about
    half the trials, the forward itself right; tests/models/test_fpn.py), so an `amp=true` CPU
    step over a batch whose P6 map is 1 wide (padded inputs <= 64 px wide) would train P7 on
    noise. float32 costs nothing there: such a map holds a few values.
    """

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = _conv_exact_at_small_maps(self.p6, p[-1] if self.use_P5 else c[-1])
        p7 = _conv_exact_at_small_maps(self.p7, torch.relu(p6))
        return p + [p6, p7], names + ["p6", "p7"]


def _conv_exact_at_small_maps(conv: nn.Conv2d, x: Tensor) -> Tensor:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and min(x.shape[-2:]) < max(conv.stride):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)
