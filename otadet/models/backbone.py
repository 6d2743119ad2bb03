"""ResNet / ResNeXt backbones from torchvision, returning C3-C5 (strides 8, 16, 32).

Weights are never downloaded here. `pretrained` is either a local torchvision state-dict
file, or 'torchvision' / 'torchvision:<WEIGHTS>' for torchvision's ImageNet weights taken from
its own local cache (torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints) —
a file missing there fails with the exact name and folder to put it in.
With pretrained weights the usual detection recipe applies (detectron2): BatchNorm frozen
into affine constants and the first `freeze_at` stages not trained. Training from scratch
(the CPU-sized models) uses ordinary BatchNorm instead.
`dcn_stages` turns the 3x3 convs of those stages (3, 4, 5 = c3-c5) into DCNv2 (models/dcn.py).
"""

from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNeXt101_64X4D_Weights,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnext101_64x4d,
)
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import FrozenBatchNorm2d

from ..config import ARCHS as ARCH_NAMES, DCN_STAGES, NORMS as NORM_NAMES
from ..utils.log import LOGGER
from .dcn import ModulatedDeformConv2d

__all__ = ["ResNetBackbone", "ARCHS", "NORMS", "DCN_STAGES", "TORCHVISION_WEIGHTS", "LoadReport", "pretrained_file"]


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
assert tuple(ARCHS) == ARCH_NAMES and tuple(NORMS) == NORM_NAMES  # the names the config checks YAMLs against

# pretrained='torchvision' picks IMAGENET1K_V1: the weights detection models are trained from
# (torchvision's own detectors and the paper's era); 'torchvision:IMAGENET1K_V2' picks another.
TORCHVISION_WEIGHTS = {
    "resnet18": ResNet18_Weights,
    "resnet34": ResNet34_Weights,
    "resnet50": ResNet50_Weights,
    "resnet101": ResNet101_Weights,
    "resnext101_64x4d": ResNeXt101_64X4D_Weights,
}
_TORCHVISION = "torchvision"
_DEFAULT_WEIGHTS = "IMAGENET1K_V1"


class LoadReport(NamedTuple):
    """What a pretrained state dict did to the backbone."""

    file: Path
    loaded: int  # tensors copied
    unused: list[str]  # keys of the file not in the backbone: the ImageNet classifier fc.*
    new: list[str]  # backbone keys absent from the file: DCN offset/mask convs (zero-initialised)


def pretrained_file(arch: str, pretrained: str, key: str = "backbone.pretrained") -> Path:
    """The local file `pretrained` names for `arch`: a path, or torchvision's cached weights.

    'torchvision' / 'torchvision:<WEIGHTS>' resolve to torch.hub.get_dir()/checkpoints/<file of
    the weights' URL>, the file torchvision itself would load; nothing is downloaded. Raises
    FileNotFoundError naming the file to place and where, ValueError for an unknown weight name.
    """
    if not (pretrained == _TORCHVISION or pretrained.startswith(_TORCHVISION + ":")):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{key}: {path} does not exist — place a torchvision {arch} state dict there "
                f"(e.g. {_example_file(arch)}), use {_TORCHVISION} for torchvision's cached ImageNet weights, "
                "or set it to null"
            )
        return path
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"{key}={pretrained}: torchvision has no ImageNet weights for {arch} "
            f"(it has {', '.join(TORCHVISION_WEIGHTS)}); train {arch} from scratch with {key} null"
        )
    enum = TORCHVISION_WEIGHTS[arch]
    name = pretrained.partition(":")[2] or _DEFAULT_WEIGHTS
    if name not in enum.__members__:
        raise ValueError(f"{key}={pretrained}: {enum.__name__} has no '{name}'; choose one of {', '.join(enum.__members__)}")
    weights = enum[name]
    file_name = Path(weights.url).name
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}={pretrained}: {enum.__name__}.{weights.name} is not in torchvision's local cache and otadet never "
            f"downloads. Place {file_name} (from {weights.url}) at {path} — the folder is "
            "torch.hub.get_dir()/checkpoints, "
            f"set by $TORCH_HOME — or point {key} at a local copy of the file"
        )
    return path


def _example_file(arch: str) -> str:
    enum = TORCHVISION_WEIGHTS.get(arch)
    return Path(enum[_DEFAULT_WEIGHTS].url).name if enum else "a file saved with torch.save(model.state_dict(), ...)"


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk -> OrderedDict(c3, c4, c5).

    dcn_stages: stages among (3, 4, 5) whose blocks get a DCNv2 3x3 conv (the bottleneck's
    conv2; for a basic block its second 3x3), created before the pretrained weights load.
    """

    def __init__(
        self,
        *,
        arch: str,
        norm: str = "frozen_bn",
        freeze_at: int = 2,
        pretrained: str | None = None,
        dcn_stages: tuple[int, ...] | list[int] = (),
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        net = ARCHS[arch](weights=None, norm_layer=NORMS[norm])
        if stride_in_1x1:
            _move_stride_to_1x1(net)
        for stage in dcn_stages:
            assert stage in DCN_STAGES, f"dcn_stages: {stage} not in {DCN_STAGES}"
            for block in getattr(net, f"layer{stage - 1}"):
                block.conv2 = ModulatedDeformConv2d.from_conv(block.conv2)
        self.load_report = _load_pretrained(net, pretrained_file(arch, pretrained), arch) if pretrained else None
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


def _move_stride_to_1x1(net: ResNet) -> None:
    """MSRA ResNet: each stage's downsampling block strides in its first 1x1 conv instead of the
    3x3 (torchvision's v1.5). Same weights and shapes; only where the stride-2 sampling happens."""
    for stage in (net.layer2, net.layer3, net.layer4):
        block = stage[0]
        assert hasattr(block, "conv3"), "stride_in_1x1 applies to bottleneck ResNets"
        block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).weight.numel()


def _is_new_layer(key: str) -> bool:
    """Backbone keys no ImageNet file has: the DCN offset/mask convs."""
    return ".offset_mask." in key


def _load_pretrained(net: ResNet, path: Path, arch: str) -> LoadReport:
    """Copy a torchvision state dict into `net`; fc.* is unused, DCN offset convs stay new.

    Any other missing or unexpected key, or a shape mismatch, means another architecture's file
    and raises ValueError naming keys and the fix.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or one that needs pickle
        raise ValueError(
            f"backbone.pretrained: {path} does not load with weights_only=True ({type(e).__name__}); "
            f"point it at a torchvision state dict of {arch} (.pth) or an otadet checkpoint (.pt)"
        ) from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"backbone.pretrained: {path} holds a {type(state).__name__}, not a state dict")
    unused = sorted(k for k in state if k.startswith("fc."))  # the ImageNet classifier
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    fix = f"point backbone.pretrained at a state dict of {arch}"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: another architecture's weights
        raise ValueError(f"backbone.pretrained: {path} does not match {arch}; {fix}\n{e}") from e
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    new = [k for k in missing if _is_new_layer(k)]
    missing = [k for k in missing if not _is_new_layer(k)]
    if missing or unexpected:
        raise ValueError(
            f"backbone.pretrained: {path} does not match {arch} "
            f"({len(missing)} missing keys e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]}); {fix}"
        )
    report = LoadReport(file=path, loaded=len(state), unused=unused, new=new)
    LOGGER.info(
        f"backbone {arch}: loaded {report.loaded} tensors from {path}; unused: {', '.join(unused) or 'none'} "
        f"(ImageNet classifier, expected)"
        + (f"; {len(new)} new tensors (DCN offset/mask convs, zero-initialised)" if new else "")
    )
    return report
