"""build_detector: the only code that turns a model config into modules (and that resolves the
backbone's pretrained weights to a file, models/backbone.py)."""

import dataclasses
import os

from ..config import ConfigError, InputConfig, ModelConfig
from .backbone import ResNetBackbone, pretrained_file
from .detector import STRIDES, OTADetector, build_fpn
from .head import OTAHead
from .input_norm import InputNorm

__all__ = ["build_detector", "with_pretrained"]


def build_detector(cfg: ModelConfig, num_classes: int | None = None, *, pretrained: str | bool | None = None) -> OTADetector:
    """Network for `cfg`; `num_classes` (from the dataset) overrides cfg.num_classes, and
    `pretrained` (the run key, see with_pretrained) overrides backbone.pretrained."""
    num_classes = num_classes or cfg.num_classes
    cfg = with_pretrained(cfg, pretrained)
    backbone = ResNetBackbone(
        arch=cfg.backbone.arch,
        norm=cfg.backbone.norm,
        freeze_at=cfg.backbone.freeze_at,
        pretrained=cfg.backbone.pretrained,
        dcn_stages=cfg.backbone.dcn_stages,
        stride_in_1x1=cfg.backbone.stride_in_1x1,
    )
    head = OTAHead(
        in_channels=cfg.fpn.channels,
        num_classes=num_classes,
        num_levels=len(STRIDES),
        num_convs=cfg.head.num_convs,
        gn_groups=cfg.head.gn_groups,
        prior_prob=cfg.head.prior_prob,
        # The delta coder regresses raw (dx, dy, dw, dh): no activation, no stride scaling.
        reg_activation=cfg.head.reg_activation if cfg.head.box_coder == "ltrb" else "none",
        dcn_last=cfg.head.dcn_last,
        level_scales=cfg.head.level_scales,
    )
    return OTADetector(
        backbone=backbone,
        fpn=build_fpn(backbone.out_channels, cfg.fpn.channels),
        head=head,
        num_classes=num_classes,
        box_coder=cfg.head.box_coder,
        anchor_scale=cfg.head.anchor_scale,
        point_offset=cfg.head.point_offset,
        input_norm=_input_norm(cfg.input),
    )


def with_pretrained(cfg: ModelConfig, pretrained: str | bool | None) -> ModelConfig:
    """`cfg` with the run key `pretrained` applied to backbone.pretrained.

    None keeps the model YAML's; False trains the backbone from scratch; True or 'torchvision'
    takes torchvision's IMAGENET1K_V1 weights from its local cache ('torchvision:IMAGENET1K_V2'
    another); any other string is a torchvision state-dict file. Checked here, before any
    work: a file or cache entry that is missing fails with the file to place and where.
    """
    if pretrained is None:
        return cfg
    if pretrained is False or pretrained == "":
        value = None
    elif pretrained is True:
        value = "torchvision"
    elif isinstance(pretrained, (str, os.PathLike)):
        value = str(pretrained)
    else:
        raise ConfigError(f"pretrained={pretrained!r}: expected a file path, torchvision, true/false or null")
    if value is not None:
        pretrained_file(cfg.backbone.arch, value, key="pretrained")
    return dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, pretrained=value))


def _input_norm(cfg: InputConfig) -> InputNorm | None:
    """A first layer converting the pipeline's input (InputConfig's defaults) to `cfg`, or None when they agree."""
    pipeline = InputConfig()
    if cfg == pipeline:
        return None
    return InputNorm(
        channel_order=cfg.channel_order, pixel_mean=list(cfg.pixel_mean), pixel_std=list(cfg.pixel_std),
        source_mean=list(pipeline.pixel_mean), source_std=list(pipeline.pixel_std),
    )  # fmt: skip
