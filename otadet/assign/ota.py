"""OTA: Optimal Transport Assignment (Ge et al., CVPR 2021), batched over images.

Each gt is a supplier of k_i units of "positive label", the background a supplier of the
rest; every anchor point demands one unit. The cheapest way to ship them (entropic OT,
solved by Sinkhorn) decides which gt, if any, each anchor learns from. Every knob of the
paper's ablations is a keyword argument (docs/assigners.md), settable from the model YAML.

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes. Target convention: see otadet.assign._types.
"""

import inspect
import math
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor
import torch.nn.functional as F

from ._boxes import pairwise_iou
from ._costs import IOU_COSTS, IouCost, classification_costs, focal_terms, relative_class_cost, regression_cost
from ._prior import AMBIGUITY_RULES, CENTER_PRIORS, AmbiguityRule, CenterPrior, prior_candidates, resolve_ambiguous
from ._result import all_background
from ._sparse import solve_support
from ._transport import LEAK_TOL, Solved, kept_order, leak_bound, leaks, orphan_columns, solve_kept
from ._types import BACKGROUND, AssignResult

__all__ = ["ota", "classification_costs", "focal_terms", "IOU_COSTS"]

HARD_EXCLUSION = 1e6  # an extra cost this large excludes exactly (the official code's value)


def _check_knobs(iou_cost: str, center_prior: str, ambiguity: str, prior_radius: int, fixed_k: int | None, top_q: int) -> None:
    for name, value, allowed in (
        ("iou_cost", iou_cost, IOU_COSTS),
        ("center_prior", center_prior, CENTER_PRIORS),
        ("ambiguity", ambiguity, AMBIGUITY_RULES),
    ):
        if value not in allowed:
            raise ValueError(f"ota: {name}={value!r} is not one of {', '.join(allowed)} — set assigner.{name} in the model YAML")
    for name, value in (("prior_radius", prior_radius), ("fixed_k", fixed_k), ("top_q", top_q)):
        if value is not None and value < 1:
            raise ValueError(f"ota: {name}={value} must be >= 1")


@torch.no_grad()
def ota(
    points: Tensor,
    strides: Tensor,
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    iou_weight: float = 1.5,
    iou_cost: IouCost = "log",
    center_prior: CenterPrior = "official",
    center_radius: float = 2.5,
    candidate_margin: float = 0.01,
    non_candidate_cost: float = 1e6,
    prior_radius: int = 5,
    prior_cost: float = 1e6,
    top_q: int = 20,
    fixed_k: int | None = None,
    ambiguity: AmbiguityRule = "none",
    eps: float = 0.1,
    iters: int = 50,
    tol: float | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    rescale_plan: bool = True,
    compact: bool = True,
    bucket: bool = True,
    sparse: bool = True,
) -> AssignResult:
    """Assign anchors to gts by optimal transport.

    Args:
        points: (A, 2) anchor points, x y in input pixels.
        strides: (A,) FPN stride of each point.
        cls_logits: (B, A, C) classification logits (detached predictions).
        pred_boxes: (B, A, 4) predicted boxes, xyxy pixels.
        gt_boxes: (B, G, 4) xyxy pixels, padded; gt_labels (B, G) int64; gt_mask (B, G) bool.
        iou_weight: alpha in the cost, cls + alpha * IoU loss  (paper Eq. 7: 1.5).
        iou_cost: the IoU loss: 'log' -log IoU (official), 'linear' 1 - IoU, 'giou' 1 - GIoU.
        center_prior: 'official' (center_radius, candidate_margin: inside the box and within
            center_radius*stride of its centre; others +non_candidate_cost) or 'nearest' (the
            prior_radius**2 points nearest the centre on each level; others +prior_cost).
            An extra cost >= 1e6 excludes exactly; a smaller prior_cost is a soft prior.
        top_q, fixed_k: k_i = max(1, floor(sum of the top_q candidate IoUs)) (Sec. 3.3, q = 20),
            or fixed_k for every gt (clipped to its number of candidates) when set.
        ambiguity: 'none' (plain OTA), or settle anchors that are candidates of several gts
            first by 'min_area' (smallest gt), 'max_iou' (IoU of the predicted box) or
            'min_loss' (lowest cls + alpha*IoU cost), then run OTA (paper Table 3).
        eps, iters, tol: Sinkhorn regularisation, iterations (official: 0.1, 50) and optional
            early stop on the marginal error (None runs all iters).
        focal_alpha, focal_gamma: the focal cost, as the focal loss.
        rescale_plan: divide each supplier's row by its max before the argmax (official code).
        compact: solve only over anchors some gt can reach (same assignment, faster); used
            when the exclusion cost is >= 1e6.
        bucket: on the CPU, solve images of very different gt counts in separate groups, so
            one crowded image does not pad every other image's problem to its size (each
            image's problem is independent: the same assignment). CUDA keeps one batch, where
            launches, not padding, cost time.
        sparse: on the CPU, run Sinkhorn over the (gt, candidate) pairs and the background row
            only, the batch flattened into one problem (_sparse; the dense solve's iterates up to
            float rounding, O(pairs) per iteration instead of O(G*K)); used when the exclusion
            cost is >= 1e6. CUDA keeps the dense compiled solve.
    A gt with no candidate at all (smaller than the point spacing: an "orphan") has +1e6 on
    every anchor, a constant shift of its row that changes no OT solution: it is dropped, so
    such a gt competes for every anchor and still gets its k = 1 positive.
    Returns:
        AssignResult. stats, 0-dim: num_pos, num_gts, mean_k, pos_per_gt, marginal_error (max
        |column sum - 1| of the plan), num_ambiguous (N_amb: anchors whose largest share of
        their unit, max_i pi_ij / sum_i pi_ij, is < 0.9; such an anchor necessarily receives
        >= 0.1 foreground mass), sinkhorn_iters, compacted (1 if the compacted solve was used),
        sparse (1 if the sparse solve was used).
        Not 0-dim: dynamic_k (B, G) the k of every gt (0 for padding).
    """
    _check_knobs(iou_cost, center_prior, ambiguity, prior_radius, fixed_k, top_q)
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    if bucket and B > 1 and cls_logits.device.type == "cpu":
        groups = _buckets(gt_mask.sum(dim=1).tolist())
        if len(groups) > 1:
            knobs = {name: value for name, value in locals().items() if name in _KNOBS} | {"bucket": False}
            return _assign_in_groups(groups, points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, knobs)
    # Assignment is done in float32 whatever the autocast state.
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    device = cls_logits.device
    if G == 0 or not bool(gt_mask.any()):
        zero = torch.zeros((), device=device)
        return all_background(
            B, A, C, device, marginal_error=zero, sinkhorn_iters=zero.long(), compacted=zero, sparse=zero,
            dynamic_k=torch.zeros(B, G, device=device),
        )  # fmt: skip

    candidates = prior_candidates(
        points, strides, gt_boxes, gt_mask, center_prior=center_prior, center_radius=center_radius,
        candidate_margin=candidate_margin, prior_radius=prior_radius,
    )  # fmt: skip  (B, G, A)
    exclusion = non_candidate_cost if center_prior == "official" else prior_cost
    focal = dict(alpha=focal_alpha, gamma=focal_gamma)
    solve_columns = partial(
        _solve_columns, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, candidates, exclusion=exclusion,
        iou_weight=iou_weight, iou_cost=iou_cost, ambiguity=ambiguity, top_q=top_q, fixed_k=fixed_k, focal=focal,
        eps=eps, iters=iters, tol=tol, rescale=rescale_plan,
    )  # fmt: skip
    most_negative = (1 - focal_alpha) * F.softplus(cls_logits.amax())  # bounds any one class's negative term
    sparse = sparse and device.type == "cpu" and exclusion >= HARD_EXCLUSION

    def outside_bound(out: _Columns, log_count: float | Tensor) -> Tensor:
        """Log of a bound on the mass any gt with candidates sends to `count` of its non-candidates:
        at most exp(f_i - f_bg - r_ij) each, r_ij >= (exclusion - most_negative)/eps. NaN when the
        background supplies nothing (f_bg = -inf): no bound."""
        bound = out.f[:, :-1] - out.f[:, -1:] + (most_negative - exclusion) / eps + log_count  # (B, G)
        return bound.masked_fill(out.orphans | ~gt_mask, float("-inf")).amax()

    def solve(keep: Tensor) -> _Columns:
        nonlocal sparse
        out = solve_columns(keep, sparse=sparse)
        # The support leaves out each gt's non-candidates, kept or dropped: fewer than A of them.
        if sparse and not bool(outside_bound(out, math.log(A)) <= math.log(LEAK_TOL)):
            sparse = False  # not certified (e.g. no background supply): the dense solve from here on
            out = solve_columns(keep, sparse=False)
        return out

    every = torch.ones(B, A, dtype=torch.bool, device=device)
    # Compaction (see _transport): solve over the candidates only, when non-candidates are truly excluded.
    keep = candidates.any(dim=1) if compact and exclusion >= HARD_EXCLUSION else every  # (B, A)
    costs = dict(exclusion=exclusion, iou_weight=iou_weight, iou_cost=iou_cost, focal=focal, eps=eps)
    relative = None  # (B, G, A) r_ij = (C_ij - C_bg,j)/eps at every anchor, built only when needed
    orphan_rows = None  # (B, O) indices of the orphan gts, (B, O) real, (B, O, A) their r_ij

    def add_orphan_columns(orphans: Tensor, keep: Tensor):
        index, real = kept_order(orphans)  # (B, O)
        boxes, labels = gt_boxes.gather(1, index[:, :, None].expand(B, -1, 4)), gt_labels.gather(1, index)
        rows = (index, real, _relative_cost(cls_logits, pred_boxes, boxes, labels, real, **costs))
        return rows, keep | orphan_columns(rows[2], real)

    orphans = gt_mask & ~candidates.any(dim=2)  # (B, G) known before the solve (unless an ambiguity rule makes more)
    if not bool(keep.all()) and bool(orphans.any()):
        orphan_rows, keep = add_orphan_columns(orphans, keep)
    out = solve(keep)
    for _ in range(4):
        if bool(keep.all()):
            break
        if (orphan_rows is None or not torch.equal(out.orphans, orphans)) and bool(out.orphans.any()):
            orphans = out.orphans
            orphan_rows, keep = add_orphan_columns(orphans, keep)
            out = solve(keep)
        # Certificate, cheap form for the gts with candidates, over the dropped anchors.
        dropped = (A - keep.sum(dim=1)).clamp(min=1).float().log()  # (B,)
        cheap = outside_bound(out, dropped[:, None])
        if relative is None and not bool(cheap <= math.log(LEAK_TOL)):  # NaN (no background supply) counts as a leak
            relative = _relative_cost(cls_logits, pred_boxes, gt_boxes, gt_labels, out.orphans, **costs)
        if relative is not None:
            bound = leak_bound(out.f, relative, keep)  # (B, G, A)
        elif orphan_rows is not None:
            index, real, orphan_relative = orphan_rows
            f = torch.cat((out.f.gather(1, index).masked_fill(~real, float("-inf")), out.f[:, -1:]), dim=1)  # (B, O+1)
            bound = leak_bound(f, orphan_relative, keep)  # (B, O, A)
        else:
            break
        if not leaks(bound):
            break
        # A crowd whose k's outgrow its candidates ships the excess to non-candidates: keep those too.
        grown = keep | (bound > math.log(LEAK_TOL / A)).any(dim=1)
        if torch.equal(grown, keep):  # e.g. the gts' k's exceed the anchors: no background supply
            keep = every
            out = solve(keep)
            break
        keep = grown
        out = solve(keep)
    else:
        keep = every
        out = solve(keep)

    supplier = torch.full((B, A), G, dtype=torch.long, device=device).scatter_(1, out.order, out.choice)  # (B, A)
    gt_index = supplier.clamp(max=G - 1)
    positive = (supplier < G) & gt_mask.gather(1, gt_index)  # (B, A)
    iou_kept = out.ious.gather(1, out.choice.clamp(max=G - 1)[:, None, :]).squeeze(1)  # (B, K)
    iou_targets = torch.zeros(B, A, device=device).scatter_(1, out.order, iou_kept * out.kept) * positive

    matched = torch.where(positive, supplier, BACKGROUND)
    labels = torch.where(positive, gt_labels.gather(1, gt_index), C)
    box_targets = gt_boxes.gather(1, gt_index[:, :, None].expand(B, A, 4)) * positive[:, :, None]

    num_gts = gt_mask.sum()
    num_pos = positive.sum()
    stats = {
        "num_pos": num_pos,
        "num_gts": num_gts,
        "mean_k": out.k.sum() / num_gts,
        "pos_per_gt": num_pos / num_gts,
        "marginal_error": out.solved.marginal_error,
        "num_ambiguous": out.solved.num_ambiguous,
        "sinkhorn_iters": torch.tensor(out.solved.iters, device=device),
        "compacted": torch.tensor(float(not bool(keep.all())), device=device),
        "sparse": torch.tensor(float(sparse), device=device),
        "dynamic_k": out.k,
    }
    return AssignResult(matched, labels, box_targets, iou_targets, stats)


_KNOBS = frozenset(
    name for name, p in inspect.signature(ota).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)


def _buckets(counts: list[int], ratio: float = 4.0) -> list[list[int]]:
    """Image indices grouped by gt count, largest first: an image joins the current group while
    its G+1 rows are at least 1/ratio of the group's largest (padding then costs < ratio x)."""
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    groups = [[order[0]]]
    for i in order[1:]:
        if ratio * (counts[i] + 1) < counts[groups[-1][0]] + 1:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _assign_in_groups(groups, points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, knobs) -> AssignResult:
    """`ota` over each group of images (gts trimmed to the group's most), merged into one batch result."""
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    device = cls_logits.device
    matched = torch.empty(B, A, dtype=torch.long, device=device)
    labels = torch.empty(B, A, dtype=torch.long, device=device)
    box_targets = torch.empty(B, A, 4, device=device)
    iou_targets = torch.empty(B, A, device=device)
    dynamic_k = torch.zeros(B, G, device=device)
    parts = []
    for group in groups:
        idx = torch.tensor(group, device=device)
        g = max(int(gt_mask[idx].sum(dim=1).max()), 1)  # real gts come first in each row
        part = ota(points, strides, cls_logits[idx], pred_boxes[idx], gt_boxes[idx, :g], gt_labels[idx, :g], gt_mask[idx, :g], **knobs)
        matched[idx], labels[idx], box_targets[idx], iou_targets[idx] = part.matched, part.labels, part.box_targets, part.iou_targets
        dynamic_k[idx, :g] = part.stats["dynamic_k"]
        parts.append(part.stats)
    num_gts, num_pos = gt_mask.sum(), (matched >= 0).sum()
    stats = {
        "num_pos": num_pos,
        "num_gts": num_gts,
        "mean_k": dynamic_k.sum() / num_gts.clamp(min=1),
        "pos_per_gt": num_pos / num_gts.clamp(min=1),
        "marginal_error": torch.stack([p["marginal_error"] for p in parts]).amax(),
        "num_ambiguous": torch.stack([p["num_ambiguous"] for p in parts]).sum(),
        "sinkhorn_iters": torch.stack([p["sinkhorn_iters"] for p in parts]).amax(),
        "compacted": torch.stack([p["compacted"] for p in parts]).amax(),  # 1 if any group solved compacted
        "sparse": torch.stack([p["sparse"] for p in parts]).amin(),  # 1 if every group solved sparse
        "dynamic_k": dynamic_k,
    }
    return AssignResult(matched, labels, box_targets, iou_targets, stats)


class _Columns(NamedTuple):
    order: Tensor  # (B, K) anchor index of each kept column
    kept: Tensor  # (B, K) bool, False = padding column
    ious: Tensor  # (B, G, K) IoU of the kept anchors' predicted boxes with the gts
    orphans: Tensor  # (B, G) real gts with no candidate
    k: Tensor  # (B, G) units each gt supplies
    solved: Solved

    @property
    def f(self) -> Tensor:
        return self.solved.f

    @property
    def choice(self) -> Tensor:
        return self.solved.choice


def _solve_columns(
    cls_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, candidates: Tensor,
    keep: Tensor, *, exclusion: float, iou_weight: float, iou_cost: str, ambiguity: str, top_q: int,
    fixed_k: int | None, focal: dict, eps: float, iters: int, tol: float | None, rescale: bool, sparse: bool,
) -> _Columns:  # fmt: skip
    """Build the cost over the anchors in keep (B, A) only and solve OT there (Eqs. 4-7)."""
    B, A, C = cls_logits.shape
    if bool(keep.all()):
        order, kept = torch.arange(A, device=keep.device).expand(B, A), keep
        logits, boxes, cand = cls_logits, pred_boxes, candidates
    else:
        order, kept = kept_order(keep)  # (B, K)
        K = order.shape[1]
        logits = cls_logits.gather(1, order[:, :, None].expand(B, K, C))  # (B, K, C)
        boxes = pred_boxes.gather(1, order[:, :, None].expand(B, K, 4))  # (B, K, 4)
        cand = candidates.gather(2, order[:, None, :].expand(B, candidates.shape[1], K)) & kept[:, None, :]  # (B, G, K)
    gt_cost, background_cost = classification_costs(logits, gt_labels, **focal)  # (B, G, K), (B, K)
    ious = pairwise_iou(gt_boxes, boxes)  # (B, G, K)
    # Eq. 7: c_ij = L_cls + alpha * L_reg.
    pair_cost = gt_cost + iou_weight * regression_cost(ious, gt_boxes, boxes, iou_cost)  # (B, G, K)
    if ambiguity != "none":
        area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, G)
        score = {"min_area": area[:, :, None].expand_as(ious), "max_iou": -ious, "min_loss": pair_cost}[ambiguity]
        cand = resolve_ambiguous(cand, score)
    orphans = gt_mask & ~cand.any(dim=2)  # (B, G)
    # The centre prior: non-candidates pay `exclusion`; an orphan's would be a constant over its row: dropped.
    # The sparse solve leaves them out instead (their share is bounded by the caller).
    if not sparse:
        pair_cost = pair_cost + exclusion * (~cand & ~orphans[:, :, None])
    cost = torch.cat((pair_cost, background_cost[:, None, :]), dim=1)  # (B, G+1, K)

    if fixed_k is None:
        # Sec. 3.3 dynamic k: each gt supplies as many labels as its top-q candidate IoUs sum to.
        k = (ious * cand).topk(min(top_q, ious.shape[2]), dim=2).values.sum(dim=2).floor()  # (B, G)
    else:
        k = cand.sum(dim=2).clamp(max=fixed_k).float()  # a gt cannot fill more candidates than it has
    k = k.clamp(min=1) * gt_mask  # (B, G); 0 for padding
    # Eq. 4: background supplies the n - sum(k) units the gts do not.
    supply = torch.cat((k, (A - k.sum(dim=1, keepdim=True)).clamp(min=0)), dim=1)  # (B, G+1)
    dropped = A - keep.sum(dim=1)  # (B,)
    if sparse:
        support = torch.cat(((cand | orphans[:, :, None]), kept[:, None, :]), dim=1)  # (B, G+1, K)
        solved = solve_support(cost, support, supply, kept, dropped, eps, iters, tol, rescale)
    else:
        solved = solve_kept(cost, supply, kept, dropped, eps, iters, tol, rescale)
    return _Columns(order, kept, ious, orphans, k, solved)


def _relative_cost(
    cls_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, orphans: Tensor,
    exclusion: float, iou_weight: float, iou_cost: str, focal: dict, eps: float,
) -> Tensor:  # fmt: skip
    """r_ij = (C_ij - C_bg,j)/eps at every anchor, as it stands outside the candidates -> (B, G, A).
    The background cost cancels, so this needs no (B, A, C) work."""
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (B, G, A)
    relative = relative_class_cost(cls_logits, gt_labels, **focal) + iou_weight * regression_cost(ious, gt_boxes, pred_boxes, iou_cost)
    return (relative + exclusion * ~orphans[:, :, None]) / eps
