"""Which anchors may serve a gt (the centre prior), and the ambiguity rules of the paper's Table 3.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max).
"""

import torch
from torch import Tensor

from ..knobs import AMBIGUITY_RULES, CENTER_PRIORS, AmbiguityRule, CenterPrior
from ._boxes import centre_candidates, nearest_per_level

__all__ = ["CenterPrior", "AmbiguityRule", "CENTER_PRIORS", "AMBIGUITY_RULES", "prior_candidates", "resolve_ambiguous"]


def prior_candidates(
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    *,
    center_prior: str,
    center_radius: float,
    candidate_margin: float,
    prior_radius: int,
) -> Tensor:
    """Candidate anchors of each gt -> (B, G, A) bool; padded gts have none.

    'official': inside the box by more than candidate_margin px AND within center_radius*stride
        of its centre (the official code's rule, behind the published 40.7 AP).
    'nearest': the prior_radius**2 points nearest the box centre on every FPN level (the
        paper's Sec. 3.4 text, the r ablation), whether inside the box or not.
    """
    if center_prior == "official":
        candidates = centre_candidates(points, strides, gt_boxes, radius=center_radius, margin=candidate_margin)
    else:
        candidates = nearest_per_level(points, strides, gt_boxes, count=prior_radius**2)
    return candidates & gt_mask[:, :, None]  # (B, G, A)


def resolve_ambiguous(candidates: Tensor, score: Tensor) -> Tensor:
    """An anchor that is a candidate of several gts stays a candidate of only the one with the
    lowest score (B, G, A) (paper Table 3: such anchors are settled by the rule, then OTA runs).

    candidates (B, G, A) bool -> (B, G, A) bool.
    """
    shared = candidates.sum(dim=1) > 1  # (B, A)
    winner = score.masked_fill(~candidates, float("inf")).argmin(dim=1)  # (B, A)
    gt_index = torch.arange(candidates.shape[1], device=candidates.device)[None, :, None]  # (1, G, 1)
    return candidates & (~shared[:, None, :] | (gt_index == winner[:, None, :]))
