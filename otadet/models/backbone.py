"""ResNet / ResNeXt backbones from torchvision, returning C3-C5 (strides 8, 16, 32).

Weights are never downloaded here: `pretrained` is a local torchvision state-dict file.
With pretrained weights the usual detection recipe applies (detectron2): BatchNorm frozen
into affine constants and the first `freeze_at` stages not trained. Training from scratch
(the CPU-sized models) uses ordinary BatchNorm instead.
"""

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101, resnext101_64x4d
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["ResNetBackbone", "ARCHS"]


def _resnet10(*, weights: None = None, **kwargs) -> ResNet:
    """ResNet-18 with one block per stage: torchvision's ResNet, sized for CPU training (no weights exist)."""
    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


ARCHS = {
    "resnet10": _resnet10,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnext101_64x4d": resnext101_64x4d,
}
NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk -> OrderedDict(c3, c4, c5)."""

    def __init__(self, *, arch: str, norm: str = "frozen_bn", freeze_at: int = 2, pretrained: str | None = None):
        super().__init__()
        net = ARCHS[arch](weights=None, norm_layer=NORMS[norm])
        if pretrained:
            _load_pretrained(net, Path(pretrained))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        # Output channels of layer2..4, read off the blocks rather than tabulated per arch.
        self.out_channels = [_stage_channels(s) for s in (self.layer2, self.layer3, self.layer4)]
        # freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and res2 (detectron2).
        for module in [self.stem, self.layer1][:freeze_at]:
            module.requires_grad_(False)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c3=c3, c4=c4, c5=c5)


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).weight.numel()


def _load_pretrained(net: ResNet, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone.pretrained: {path} does not exist — place a torchvision ResNet state dict "
            "there (e.g. resnet50-0676ba61.pth from torchvision's model zoo) or set pretrained: null"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    fix = "point backbone.pretrained at a state dict of backbone.arch"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: another architecture's weights
        raise ValueError(f"backbone.pretrained: {path} does not match this architecture; {fix}\n{e}") from e
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"backbone.pretrained: {path} does not match this architecture "
            f"({len(missing)} missing keys e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]}); {fix}"
        )
