"""The OTA-FCOS head: shared across FPN levels, a classification tower and a regression tower
(each num_convs x conv3x3 + GroupNorm + ReLU), with the paper's IoU branch on the regression
tower in place of FCOS's centerness. dcn_last=True makes the last conv of each tower DCNv2
(the paper's Table 5 model).

Shapes: B=batch, A=anchor points over all levels, C=classes.
"""

import math

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from .dcn import ModulatedDeformConv2d

__all__ = ["OTAHead"]


def _tower(channels: int, num_convs: int, gn_groups: int, dcn_last: bool = False) -> nn.Sequential:
    layers = []
    for i in range(num_convs):
        deform = dcn_last and i == num_convs - 1
        conv = (ModulatedDeformConv2d if deform else nn.Conv2d)(channels, channels, 3, padding=1)
        layers += [conv, nn.GroupNorm(gn_groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _flatten(x: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H*W, K), row-major over positions as the anchor points are laid out."""
    return x.flatten(2).transpose(1, 2)


class OTAHead(nn.Module):
    """Dense predictions per FPN level, concatenated over levels.

    forward(features, strides) -> (cls_logits (B, A, C), ltrb (B, A, 4) distances in pixels
    (raw anchor deltas when reg_activation is "none"), iou_logits (B, A)).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_convs: int = 4,
        gn_groups: int = 32,
        prior_prob: float = 0.01,
        reg_activation: str = "relu",
        dcn_last: bool = False,
        level_scales: bool = True,
    ):
        super().__init__()
        assert reg_activation in ("relu", "exp", "none"), reg_activation  # none: raw deltas (box_coder delta)
        self.reg_activation = reg_activation
        self.cls_tower = _tower(in_channels, num_convs, gn_groups, dcn_last)
        self.reg_tower = _tower(in_channels, num_convs, gn_groups, dcn_last)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.iou_pred = nn.Conv2d(in_channels, 1, 3, padding=1)
        # A learnable scale per level for the regression (FCOS); level_scales=False has none (torchvision's FCOS).
        self.scales = nn.Parameter(torch.ones(num_levels)) if level_scales else None
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        for module in self.modules():
            if isinstance(module, ModulatedDeformConv2d):
                module.reset_offset_mask()  # DCN starts on the regular grid
        # Focal-loss prior: start every class at probability prior_prob (RetinaNet Sec. 4.1).
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor], strides: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        cls_out, reg_out, iou_out = [], [], []
        for level, (x, stride) in enumerate(zip(features, strides)):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            reg = self.bbox_pred(reg_feat)
            if self.scales is not None:
                reg = reg * self.scales[level]
            if self.reg_activation != "none":
                # Distances normalised by stride (FCOS norm_reg_targets), non-negative.
                reg = (torch.relu(reg) if self.reg_activation == "relu" else torch.exp(reg)) * stride
            cls_out.append(_flatten(self.cls_logits(cls_feat)))
            reg_out.append(_flatten(reg))
            iou_out.append(_flatten(self.iou_pred(reg_feat)))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1), torch.cat(iou_out, 1).squeeze(-1)
