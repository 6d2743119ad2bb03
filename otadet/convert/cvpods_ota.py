"""The OTA authors' cvpods checkpoint (ota.res50.fpn.coco.800size.1x) -> otadet's names.

Key layout of the released model (cvpods' FCOS meta-architecture with the OTA head):
- backbone.bottom_up.stem.conv1[.norm] and backbone.bottom_up.res{2-5}.{i}.{conv1,conv2,conv3,
  shortcut}[.norm]: a detectron2-style MSRA ResNet with FrozenBN folded under each conv's `.norm`;
- backbone.fpn_lateral{3-5}, backbone.fpn_output{3-5}, backbone.top_block.p6/p7 (P6 from P5);
- head.cls_subnet / head.bbox_subnet (4 x conv + GroupNorm + ReLU), head.cls_score,
  head.bbox_pred, head.ious_pred, and head.scales.{0-4}.scale (one (1,) tensor per level).
Its training conventions (BGR caffe input, stride in the 1x1 conv, points at the cell corner)
live in cfg/ota_r50_official.yaml.
"""

import re

import torch
from torch import Tensor
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

from .torchvision_fcos import coco_rows

__all__ = ["BACKBONE_PREFIX", "MODEL_YAML", "convert_state"]

BACKBONE_PREFIX = "backbone.bottom_up."
MODEL_YAML = "ota_r50_official.yaml"
_NORM = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}  # detectron2 conv -> its torchvision BatchNorm
_FPN = {"fpn_lateral": "inner_blocks", "fpn_output": "layer_blocks"}  # + level index: stage 3 -> 0
_HEAD = {"cls_subnet": "cls_tower", "bbox_subnet": "reg_tower", "cls_score": "cls_logits", "bbox_pred": "bbox_pred",
         "ious_pred": "iou_pred"}  # fmt: skip


def _rename(key: str) -> str | None:
    """The otadet name of one cvpods key (None for head.scales, gathered separately)."""
    if m := re.fullmatch(r"backbone\.bottom_up\.stem\.conv1\.(norm\.)?(\w+)", key):
        return f"backbone.stem.{1 if m[1] else 0}.{m[2]}"
    if m := re.fullmatch(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)", key):
        stage, block, conv, norm, leaf = int(m[1]), m[2], m[3], m[4], m[5]
        if conv == "shortcut":
            module = "downsample.1" if norm else "downsample.0"
        else:
            module = _NORM[conv] if norm else conv
        return f"backbone.layer{stage - 1}.{block}.{module}.{leaf}"
    if m := re.fullmatch(r"backbone\.(fpn_lateral|fpn_output)([3-5])\.(\w+)", key):
        return f"fpn.{_FPN[m[1]]}.{int(m[2]) - 3}.0.{m[3]}"
    if m := re.fullmatch(r"backbone\.top_block\.(p6|p7)\.(\w+)", key):
        return f"fpn.extra_blocks.{m[1]}.{m[2]}"
    if re.fullmatch(r"head\.scales\.\d+\.scale", key):
        return None
    if m := re.fullmatch(r"head\.(cls_subnet|bbox_subnet|cls_score|bbox_pred|ious_pred)\.(.+)", key):
        return f"head.{_HEAD[m[1]]}.{m[2]}"
    raise ValueError(key)


def convert_state(state: dict[str, Tensor], where: str) -> tuple[dict[str, Tensor], list[str]]:
    """cvpods OTA state dict -> (otadet state dict, the 80 COCO class names in category-id order)."""
    out: dict[str, Tensor] = {}
    scales: dict[int, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        try:
            new = _rename(key)
        except ValueError:
            raise ValueError(f"{where}: key {key!r} is not in the OTA cvpods R50 layout — is this another model's file?") from None
        if new is None:
            scales[int(key.split(".")[2])] = value.reshape(())
        else:
            out[new] = value
    if scales:
        if sorted(scales) != list(range(len(scales))):
            raise ValueError(f"{where}: head.scales.* has levels {sorted(scales)}, expected 0..{len(scales) - 1}")
        out["head.scales"] = torch.stack([scales[i] for i in range(len(scales))])  # (levels,)
    _, names = coco_rows(list(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"]))
    classes = out.get("head.cls_logits.bias")
    if classes is not None and classes.shape[0] != len(names):
        raise ValueError(f"{where}: head.cls_score has {classes.shape[0]} classes, the COCO model has {len(names)}")
    return out, names
