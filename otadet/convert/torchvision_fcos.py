"""torchvision's `fcos_resnet50_fpn` state dict -> otadet's names (cfg/fcos_r50_torchvision.yaml).

torchvision's FCOS is otadet's network with other names: ResNet-50 (`backbone.body`), the
same torchvision FPN with P6/P7 from P5 (`backbone.fpn`), and a 4-conv GroupNorm head whose
score is sqrt(sigmoid(cls) * sigmoid(centerness)). What differs is in the model YAML (anchor
points at the cell corner, no level scales, centerness in the IoU-branch slot). Its class layer
has 91 rows indexed by COCO category id (0 = background, 11 ids 'N/A'); the 80 real ones are
kept, in id order, with their names.
"""

import re

from torch import Tensor
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

__all__ = ["WEIGHTS", "MODEL_YAML", "coco_rows", "convert_state"]

WEIGHTS = {"fcos_resnet50_fpn": FCOS_ResNet50_FPN_Weights.COCO_V1}  # torchvision:<name> sources
MODEL_YAML = "fcos_r50_torchvision.yaml"

# torchvision key (regex) -> otadet key; every key must match one.
_RENAMES = [
    (r"backbone\.body\.conv1\.", "backbone.stem.0."),
    (r"backbone\.body\.bn1\.", "backbone.stem.1."),
    (r"backbone\.body\.(layer[1-4]\.)", r"backbone.\1"),
    (r"backbone\.fpn\.", "fpn."),
    (r"head\.classification_head\.conv\.", "head.cls_tower."),
    (r"head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"head\.regression_head\.conv\.", "head.reg_tower."),
    (r"head\.regression_head\.bbox_reg\.", "head.bbox_pred."),
    (r"head\.regression_head\.bbox_ctrness\.", "head.iou_pred."),
]


def coco_rows(categories: list[str]) -> tuple[list[int], list[str]]:
    """Rows of torchvision's 91-way class layer that are real COCO classes, and their names."""
    rows = [i for i, name in enumerate(categories) if name not in ("__background__", "N/A")]
    return rows, [categories[i] for i in rows]


def convert_state(state: dict[str, Tensor], categories: list[str], where: str) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision FCOS state dict -> (otadet state dict, class names). Raises ValueError on a key it does not know."""
    rows, names = coco_rows(categories)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # BatchNorm bookkeeping; otadet freezes BN (FrozenBatchNorm2d)
            continue
        for pattern, repl in _RENAMES:
            new, hits = re.subn("^" + pattern, repl, key)
            if hits:
                break
        else:
            raise ValueError(f"{where}: key {key!r} is not in torchvision's fcos_resnet50_fpn — is this another model's file?")
        if new.startswith("head.cls_logits."):
            if value.shape[0] != len(categories):
                raise ValueError(f"{where}: {key} has {value.shape[0]} rows, torchvision's COCO FCOS has {len(categories)}")
            value = value[rows]  # (91, ...) -> (80, ...)
        out[new] = value
    return out, names
