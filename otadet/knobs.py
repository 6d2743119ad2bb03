"""The assigners' knobs: one frozen dataclass per assigner, the paper's defaults in one place.

A model YAML's `assigner:` mapping is checked against the fields of its assigner's dataclass
when the YAML loads (otadet.config: names, types, choices), then the dataclass's own range
checks run; the assigner itself (otadet.assign) receives the knobs as keywords and reads them
through the same dataclass. A description, like the rest of the config: no torch, no otadet
imports, so config and assign both depend on it and on nothing above it.
"""

import math
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "ASSIGNER_KNOBS", "OTAKnobs", "FCOSKnobs", "ATSSKnobs", "SimOTAKnobs",
    "IouCost", "CenterPrior", "AmbiguityRule", "IOU_COSTS", "CENTER_PRIORS", "AMBIGUITY_RULES",
]  # fmt: skip

# String knobs are Literals: the config checks YAML values against them.
IouCost = Literal["log", "linear", "giou"]
CenterPrior = Literal["official", "nearest"]
AmbiguityRule = Literal["none", "min_area", "max_iou", "min_loss"]
IOU_COSTS = get_args(IouCost)
CENTER_PRIORS = get_args(CenterPrior)
AMBIGUITY_RULES = get_args(AmbiguityRule)


@dataclass(frozen=True)
class OTAKnobs:
    """Every knob of `ota` (otadet/assign/ota.py), with the official code's defaults."""

    iou_weight: float = 1.5  # alpha in the cost c_ij = cls + alpha * IoU loss (paper Eq. 7)
    iou_cost: IouCost = "log"  # 'log' -log IoU (official), 'linear' 1 - IoU, 'giou' 1 - GIoU
    # The centre prior. 'official': inside the box by > candidate_margin px and within
    # center_radius*stride of its centre; others pay non_candidate_cost. 'nearest': the
    # prior_radius**2 points nearest the centre on each level; others pay prior_cost.
    # An extra cost >= 1e6 excludes exactly; a smaller prior_cost is a soft prior.
    center_prior: CenterPrior = "official"
    center_radius: float = 2.5
    candidate_margin: float = 0.01
    non_candidate_cost: float = 1e6
    prior_radius: int = 5
    prior_cost: float = 1e6
    # Sec. 3.3: k_i = max(1, floor(sum of the top_q candidate IoUs)), or fixed_k for every gt
    # (clipped to its number of candidates) when set.
    top_q: int = 20
    fixed_k: int | None = None
    # 'none' (plain OTA), or settle anchors that are candidates of several gts first by
    # 'min_area' (smallest gt), 'max_iou' (IoU of the predicted box) or 'min_loss' (lowest
    # cls + alpha*IoU cost), then run OTA (paper Table 3).
    ambiguity: AmbiguityRule = "none"
    eps: float = 0.1  # Sinkhorn regularisation (official: 0.1)
    iters: int = 50  # Sinkhorn iterations (official: 50), the cap when tol is set
    tol: float | None = None  # early stop on the marginal error; None runs all iters
    focal_alpha: float = 0.25  # the focal cost, as the focal loss
    focal_gamma: float = 2.0
    rescale_plan: bool = True  # divide each supplier's row by its max before the argmax (official code)
    # Speed only, the same assignment: solve over the anchors some gt can reach (used when the
    # exclusion is >= 1e6); on the CPU, solve images of gt counts > 4x apart in separate groups,
    # and run Sinkhorn over the (gt, candidate) pairs (SOLVERS["sparse"]; CUDA keeps "dense").
    compact: bool = True
    bucket: bool = True
    sparse: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("iou_cost", IOU_COSTS), ("center_prior", CENTER_PRIORS), ("ambiguity", AMBIGUITY_RULES)):
            if getattr(self, name) not in allowed:
                value = getattr(self, name)
                raise ValueError(f"ota: {name}={value!r} is not one of {', '.join(allowed)} — set assigner.{name} in the model YAML")
        for name in ("prior_radius", "fixed_k", "top_q"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ota: {name}={getattr(self, name)} must be >= 1")

    @property
    def exclusion(self) -> float:
        """The extra cost of a gt's non-candidates."""
        return self.non_candidate_cost if self.center_prior == "official" else self.prior_cost


@dataclass(frozen=True)
class FCOSKnobs:
    """`fcos` (Tian et al., ICCV 2019, with centre sampling; torchvision's FCOS matcher)."""

    # Level i (in increasing stride) takes gts with lower_i < max(l, t, r, b) < upper_i, bounds
    # from consecutive entries; one more entry than levels.
    scale_ranges: tuple = (0.0, 64.0, 128.0, 256.0, 512.0, math.inf)
    center_radius: float = 1.5  # centre sampling, in strides (FCOS: 1.5)


@dataclass(frozen=True)
class ATSSKnobs:
    """`atss` (Zhang et al., CVPR 2020)."""

    top_k: int = 9  # candidates per level by centre distance (ATSS: 9)
    # Anchor side in strides (ATSS with FCOS: 8; match head.anchor_scale for the anchor-based detector).
    anchor_size: float = 8.0
    inside_margin: float = 0.01  # a positive's centre lies inside the gt by more than this (official: 0.01 px)


@dataclass(frozen=True)
class SimOTAKnobs:
    """`simota` (YOLOX, Ge et al., 2021)."""

    center_radius: float = 2.5  # centre region half-size, in strides (YOLOX: 2.5)
    iou_weight: float = 3.0  # weight of -log IoU in the cost (YOLOX: 3)
    outside_cost: float = 1e5  # added where the point is not inside both the gt box and its centre region (YOLOX: 1e5)
    top_q: int = 10  # dynamic k = max(1, floor(sum of the gt's top_q IoUs over the candidates)) (YOLOX: 10)
    focal_alpha: float = 0.25  # the focal classification cost, as the focal loss
    focal_gamma: float = 2.0


# By the name a model YAML uses (otadet.assign.ASSIGNERS holds the functions under the same names).
ASSIGNER_KNOBS = {"ota": OTAKnobs, "fcos": FCOSKnobs, "atss": ATSSKnobs, "simota": SimOTAKnobs}
