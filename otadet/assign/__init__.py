"""Label assignment: which gt, if any, each anchor point learns from.

Every assigner is a pure function with the same form,
    assign(points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, **knobs) -> AssignResult
under no_grad and in float32, so they are swappable by name (ASSIGNERS) and testable alone;
`knobs` are the fields of the assigner's frozen dataclass in otadet/knobs.py.
Target convention (matched): gt index >= 0, -1 background, -2 ignore.
"""

from ..knobs import ASSIGNER_KNOBS, OTAKnobs
from ._result import positives_per_gt
from ._types import BACKGROUND, IGNORE, AssignResult, mark_ignored
from .atss import atss
from .fcos import fcos
from .ota import ota
from .simota import simota
from .sinkhorn import sinkhorn

__all__ = [
    "ASSIGNERS",
    "ASSIGNER_KNOBS",
    "OTAKnobs",
    "AssignResult",
    "BACKGROUND",
    "IGNORE",
    "mark_ignored",
    "positives_per_gt",
    "ota",
    "fcos",
    "atss",
    "simota",
    "sinkhorn",
]

# The paper's OTA and the baselines it is compared with, by the name a model YAML uses; each
# one's knobs are the fields of ASSIGNER_KNOBS[name] (otadet/knobs.py), passed as keywords.
ASSIGNERS = {"ota": ota, "fcos": fcos, "atss": atss, "simota": simota}
assert ASSIGNERS.keys() == ASSIGNER_KNOBS.keys()
