"""OTA: Optimal Transport Assignment (Ge et al., CVPR 2021), batched over images.

Each gt is a supplier of k_i units of "positive label", the background a supplier of the
rest; every anchor point demands one unit. The cheapest way to ship them (entropic OT,
solved by Sinkhorn) decides which gt, if any, each anchor learns from. Every knob of the
paper's ablations is a field of OTAKnobs (otadet/knobs.py, docs/assigners.md), settable from the model YAML.

`ota` reads as its stages: candidates (the centre prior) -> kept columns (compaction) ->
problem (the costs and supplies over those columns) -> solve (one of SOLVERS) -> grow (only
when the exactness bound says gts may ship mass to dropped columns) -> read-out (targets, stats).

Shapes: B=batch, A=anchor points (all FPN levels), G=gts (padded to the batch max),
C=classes, K=kept columns, O=orphan gts. Target convention: see otadet.assign._types.
"""

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor
import torch.nn.functional as F

from ..knobs import IOU_COSTS, OTAKnobs
from ._boxes import pairwise_iou
from ._costs import classification_costs, focal_terms, relative_class_cost, regression_cost
from ._prior import prior_candidates, resolve_ambiguous
from ._result import all_background
from ._sparse import solve_support
from ._transport import LEAK_TOL, Solved, kept_order, leak_bound, leaks, orphan_columns, solve_kept
from ._types import BACKGROUND, AssignResult

__all__ = ["ota", "OTAKnobs", "SOLVERS", "classification_costs", "focal_terms", "IOU_COSTS"]

HARD_EXCLUSION = 1e6  # an extra cost this large excludes exactly (the official code's value)
MAX_GROWTH = 4  # rounds of adding columns the bound asks for; past them the solve takes every anchor


@torch.no_grad()
def ota(
    points: Tensor, strides: Tensor, cls_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
    gt_mask: Tensor, **knobs,
) -> AssignResult:  # fmt: skip
    """Assign anchors to gts by optimal transport.

    Args:
        points: (A, 2) anchor points, x y in input pixels.
        strides: (A,) FPN stride of each point.
        cls_logits: (B, A, C) classification logits (detached predictions).
        pred_boxes: (B, A, 4) predicted boxes, xyxy pixels.
        gt_boxes: (B, G, 4) xyxy pixels, padded; gt_labels (B, G) int64; gt_mask (B, G) bool.
        knobs: fields of OTAKnobs.
    A gt with no candidate at all (smaller than the point spacing: an "orphan") has +1e6 on
    every anchor, a constant shift of its row that changes no OT solution: it is dropped, so
    such a gt competes for every anchor and still gets its k = 1 positive.
    Returns:
        AssignResult. stats, 0-dim: num_pos, num_gts, mean_k, pos_per_gt, marginal_error (max
        |column sum - 1| of the plan), num_ambiguous (N_amb: anchors whose largest share of
        their unit, max_i pi_ij / sum_i pi_ij, is < 0.9; such an anchor necessarily receives
        >= 0.1 foreground mass), sinkhorn_iters, compacted (1 if the compacted solve was used),
        sparse (1 if the sparse solve was used). Not 0-dim: dynamic_k (B, G) the k of every gt (0 for padding).
    """
    cfg = OTAKnobs(**knobs)
    on_cpu = cls_logits.device.type == "cpu"
    groups = _buckets(gt_mask.sum(dim=1).tolist()) if cfg.bucket and cls_logits.shape[0] > 1 and on_cpu else []
    if len(groups) > 1:
        return _assign_in_groups(groups, points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, cfg)
    # Assignment is done in float32 whatever the autocast state.
    cls_logits, pred_boxes, gt_boxes = cls_logits.float(), pred_boxes.float(), gt_boxes.float()
    if gt_boxes.shape[1] == 0 or not bool(gt_mask.any()):
        return _no_gts(cls_logits, gt_mask)
    candidates = prior_candidates(
        points, strides, gt_boxes, gt_mask, center_prior=cfg.center_prior, center_radius=cfg.center_radius,
        candidate_margin=cfg.candidate_margin, prior_radius=cfg.prior_radius,
    )  # fmt: skip  (B, G, A)
    batch = _Batch(cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, candidates, _most_negative(cls_logits, cfg))
    keep, orphan_rows = _kept_columns(batch, cfg)  # (B, A)
    state = _solve(batch, cfg, keep, orphan_rows, None, _first_solver(batch, cfg))
    state, bound = _certify(batch, cfg, state)
    if bound is not None:  # the kept columns may not hold the plan: grow them
        state = _grow(batch, cfg, state, bound)
    return _read_out(batch, state)


class _Batch(NamedTuple):
    """The float32 inputs and the candidates, fixed for the whole assignment."""

    cls_logits: Tensor  # (B, A, C)
    pred_boxes: Tensor  # (B, A, 4)
    gt_boxes: Tensor  # (B, G, 4)
    gt_labels: Tensor  # (B, G)
    gt_mask: Tensor  # (B, G)
    candidates: Tensor  # (B, G, A) the centre prior's
    most_negative: Tensor  # () bounds any one class's negative focal term


class _Problem(NamedTuple):
    """OT over the kept columns (Eqs. 4-7): what a solver takes."""

    order: Tensor  # (B, K) anchor index of each kept column
    kept: Tensor  # (B, K) bool, False = padding column
    pair_cost: Tensor  # (B, G, K) c_ij = cls + alpha * IoU loss, without the prior's exclusion
    background_cost: Tensor  # (B, K)
    support: Tensor  # (B, G, K) pairs that may carry mass: candidates, and an orphan's every column
    exclusion: float  # the extra cost of a gt's non-candidates (off the support)
    supply: Tensor  # (B, G+1) k of each gt, the background's rest last
    dropped: Tensor  # (B,) anchors left out by compaction
    ious: Tensor  # (B, G, K) IoU of the kept anchors' predicted boxes with the gts
    orphans: Tensor  # (B, G) real gts with no candidate
    k: Tensor  # (B, G) units each gt supplies


class _OrphanRows(NamedTuple):
    """The orphan gts whose columns were added to the kept ones, and their relative costs."""

    orphans: Tensor | None  # (B, G) the orphans these rows were built for; None: no rows yet
    index: Tensor | None = None  # (B, O) their gt indices
    real: Tensor | None = None  # (B, O) False = padding
    relative: Tensor | None = None  # (B, O, A) r_ij = (C_ij - C_bg,j)/eps


class _State(NamedTuple):
    """One solve and what the exactness bound needs after it."""

    keep: Tensor  # (B, A) the kept columns
    problem: _Problem
    solved: Solved
    solver: str  # the key of SOLVERS used
    orphan_rows: _OrphanRows
    relative: Tensor | None  # (B, G, A) r_ij at every anchor, built once when the cheap bound fails


def _no_gts(cls_logits: Tensor, gt_mask: Tensor) -> AssignResult:
    """No gt in the batch: every anchor is background (the exact transport solution)."""
    (B, A, C), device = cls_logits.shape, cls_logits.device
    zero = torch.zeros((), device=device)
    return all_background(
        B, A, C, device, marginal_error=zero, sinkhorn_iters=zero.long(), compacted=zero, sparse=zero,
        dynamic_k=torch.zeros(gt_mask.shape, device=device),
    )  # fmt: skip


def _most_negative(cls_logits: Tensor, cfg: OTAKnobs) -> Tensor:
    return (1 - cfg.focal_alpha) * F.softplus(cls_logits.amax())


def _first_solver(batch: _Batch, cfg: OTAKnobs) -> str:
    """'sparse' on the CPU when non-candidates are truly excluded (their share is then bounded
    after the solve), else 'dense'."""
    return "sparse" if cfg.sparse and batch.cls_logits.device.type == "cpu" and cfg.exclusion >= HARD_EXCLUSION else "dense"


def _kept_columns(batch: _Batch, cfg: OTAKnobs) -> tuple[Tensor, _OrphanRows]:
    """Compaction (see _transport): the candidates only, when non-candidates are truly excluded,
    and the columns the orphans known before the solve may send to -> keep (B, A), their rows."""
    candidates = batch.candidates
    if not (cfg.compact and cfg.exclusion >= HARD_EXCLUSION):
        return torch.ones(candidates.shape[0], candidates.shape[2], dtype=torch.bool, device=candidates.device), _OrphanRows(None)
    keep = candidates.any(dim=1)  # (B, A)
    orphans = batch.gt_mask & ~candidates.any(dim=2)  # (B, G) (an ambiguity rule may make more)
    if bool(keep.all()) or not bool(orphans.any()):
        return keep, _OrphanRows(None)
    rows, keep = _with_orphan_columns(batch, cfg, keep, orphans)
    return keep, rows


def _problem(batch: _Batch, cfg: OTAKnobs, keep: Tensor) -> _Problem:
    """The costs (Eq. 7), candidates, dynamic k (Sec. 3.3) and supplies (Eq. 4) over the columns in keep (B, A)."""
    B, A, C = batch.cls_logits.shape
    if bool(keep.all()):
        order, kept = torch.arange(A, device=keep.device).expand(B, A), keep
        logits, boxes, cand = batch.cls_logits, batch.pred_boxes, batch.candidates
    else:
        order, kept = kept_order(keep)  # (B, K)
        K, G = order.shape[1], batch.candidates.shape[1]
        logits = batch.cls_logits.gather(1, order[:, :, None].expand(B, K, C))  # (B, K, C)
        boxes = batch.pred_boxes.gather(1, order[:, :, None].expand(B, K, 4))  # (B, K, 4)
        cand = batch.candidates.gather(2, order[:, None, :].expand(B, G, K)) & kept[:, None, :]  # (B, G, K)
    gt_cost, background_cost = classification_costs(logits, batch.gt_labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    ious = pairwise_iou(batch.gt_boxes, boxes)  # (B, G, K)
    # Eq. 7: c_ij = L_cls + alpha * L_reg.
    pair_cost = gt_cost + cfg.iou_weight * regression_cost(ious, batch.gt_boxes, boxes, cfg.iou_cost)  # (B, G, K)
    if cfg.ambiguity != "none":
        gt = batch.gt_boxes
        area = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])  # (B, G)
        score = {"min_area": area[:, :, None].expand_as(ious), "max_iou": -ious, "min_loss": pair_cost}[cfg.ambiguity]
        cand = resolve_ambiguous(cand, score)
    orphans = batch.gt_mask & ~cand.any(dim=2)  # (B, G)
    if cfg.fixed_k is None:
        # Sec. 3.3 dynamic k: each gt supplies as many labels as its top-q candidate IoUs sum to.
        k = (ious * cand).topk(min(cfg.top_q, ious.shape[2]), dim=2).values.sum(dim=2).floor()  # (B, G)
    else:
        k = cand.sum(dim=2).clamp(max=cfg.fixed_k).float()  # a gt cannot fill more candidates than it has
    k = k.clamp(min=1) * batch.gt_mask  # (B, G); 0 for padding
    # Eq. 4: background supplies the n - sum(k) units the gts do not.
    supply = torch.cat((k, (A - k.sum(dim=1, keepdim=True)).clamp(min=0)), dim=1)  # (B, G+1)
    # An orphan's exclusion would be a constant over its row: dropped, so its every column is support.
    support = cand | orphans[:, :, None]
    return _Problem(order, kept, pair_cost, background_cost, support, cfg.exclusion, supply, A - keep.sum(dim=1), ious, orphans, k)


def _dense_solve(problem: _Problem, cfg: OTAKnobs) -> Solved:
    """Sinkhorn over the (G+1, K) cost, the centre prior's exclusion priced off the support."""
    pair_cost = problem.pair_cost + problem.exclusion * ~problem.support
    cost = torch.cat((pair_cost, problem.background_cost[:, None, :]), dim=1)  # (B, G+1, K)
    return solve_kept(cost, problem.supply, problem.kept, problem.dropped, cfg.eps, cfg.iters, cfg.tol, cfg.rescale_plan)


def _sparse_solve(problem: _Problem, cfg: OTAKnobs) -> Solved:
    """Sinkhorn over the support pairs and the background row only (_sparse)."""
    cost = torch.cat((problem.pair_cost, problem.background_cost[:, None, :]), dim=1)  # (B, G+1, K)
    support = torch.cat((problem.support, problem.kept[:, None, :]), dim=1)  # (B, G+1, K)
    p = problem
    return solve_support(cost, support, p.supply, p.kept, p.dropped, cfg.eps, cfg.iters, cfg.tol, cfg.rescale_plan)


# The same problem in, the same Solved out (iterates equal up to the order of float sums).
SOLVERS = {"dense": _dense_solve, "sparse": _sparse_solve}


def _solve(batch: _Batch, cfg: OTAKnobs, keep: Tensor, orphan_rows: _OrphanRows, relative: Tensor | None, solver: str) -> _State:
    """Build the problem over keep (B, A) and solve it. The sparse solve leaves each gt's
    non-candidates out; when their share is not bounded below LEAK_TOL (e.g. the background
    supplies nothing), this and every later solve of the assignment are dense."""
    problem = _problem(batch, cfg, keep)
    solved = SOLVERS[solver](problem, cfg)
    if solver == "sparse" and not bool(_outside_bound(batch, cfg, solved, problem.orphans, math.log(keep.shape[1])) <= math.log(LEAK_TOL)):
        solver, solved = "dense", SOLVERS["dense"](problem, cfg)
    return _State(keep, problem, solved, solver, orphan_rows, relative)


def _outside_bound(batch: _Batch, cfg: OTAKnobs, solved: Solved, orphans: Tensor, log_count: float | Tensor) -> Tensor:
    """Log of a bound on the mass any gt with candidates sends to `count` of its non-candidates:
    at most exp(f_i - f_bg - r_ij) each, r_ij >= (exclusion - most_negative)/eps. NaN when the
    background supplies nothing (f_bg = -inf): no bound."""
    f = solved.f
    bound = f[:, :-1] - f[:, -1:] + (batch.most_negative - cfg.exclusion) / cfg.eps + log_count  # (B, G)
    return bound.masked_fill(orphans | ~batch.gt_mask, float("-inf")).amax()


def _with_orphan_columns(batch: _Batch, cfg: OTAKnobs, keep: Tensor, orphans: Tensor) -> tuple[_OrphanRows, Tensor]:
    """The orphans' rows of relative costs, and keep (B, A) with the columns they may send to."""
    B = keep.shape[0]
    index, real = kept_order(orphans)  # (B, O)
    boxes, labels = batch.gt_boxes.gather(1, index[:, :, None].expand(B, -1, 4)), batch.gt_labels.gather(1, index)
    relative = _relative_cost(batch, cfg, boxes, labels, real)  # (B, O, A)
    return _OrphanRows(orphans, index, real, relative), keep | orphan_columns(relative, real)


def _certify(batch: _Batch, cfg: OTAKnobs, state: _State) -> tuple[_State, Tensor | None]:
    """Check the solve over the kept columns is the full problem's (_transport.leak_bound) ->
    (state, None) when it is, else (state, log bound (B, G or O, A) on the mass at dropped anchors).
    Orphans the solve found that have no columns yet get theirs first (and a new solve)."""
    if bool(state.keep.all()):
        return state, None
    rows, found = state.orphan_rows, state.problem.orphans
    if (rows.orphans is None or not torch.equal(found, rows.orphans)) and bool(found.any()):
        rows, keep = _with_orphan_columns(batch, cfg, state.keep, found)
        state = _solve(batch, cfg, keep, rows, state.relative, state.solver)
    # The cheap form for the gts with candidates, over the dropped anchors; NaN (no background supply) counts as a leak.
    dropped = (state.keep.shape[1] - state.keep.sum(dim=1)).clamp(min=1).float().log()  # (B,)
    cheap = _outside_bound(batch, cfg, state.solved, state.problem.orphans, dropped[:, None])
    if state.relative is None and not bool(cheap <= math.log(LEAK_TOL)):
        relative = _relative_cost(batch, cfg, batch.gt_boxes, batch.gt_labels, state.problem.orphans)  # (B, G, A)
        state = state._replace(relative=relative)
    if state.relative is not None:
        bound = leak_bound(state.solved.f, state.relative, state.keep)  # (B, G, A)
    elif state.orphan_rows.orphans is not None:
        rows, f = state.orphan_rows, state.solved.f
        f = torch.cat((f.gather(1, rows.index).masked_fill(~rows.real, float("-inf")), f[:, -1:]), dim=1)  # (B, O+1)
        bound = leak_bound(f, rows.relative, state.keep)  # (B, O, A)
    else:
        return state, None
    return state, (bound if leaks(bound) else None)


def _grow(batch: _Batch, cfg: OTAKnobs, state: _State, bound: Tensor) -> _State:
    """Keep the dropped columns the bound says may carry mass and solve again, at most MAX_GROWTH
    times (the last growth is not certified); past that, or when the bound adds no column (e.g.
    the gts' k's exceed the anchors: no background supply), solve over every anchor."""
    A = state.keep.shape[1]
    for growth in range(1, MAX_GROWTH + 1):
        # A crowd whose k's outgrow its candidates ships the excess to non-candidates: keep those too.
        grown = state.keep | (bound > math.log(LEAK_TOL / A)).any(dim=1)
        if torch.equal(grown, state.keep):
            break
        state = _solve(batch, cfg, grown, state.orphan_rows, state.relative, state.solver)
        if growth == MAX_GROWTH:
            break
        state, bound = _certify(batch, cfg, state)
        if bound is None:
            return state
    every = torch.ones_like(state.keep)
    return _solve(batch, cfg, every, state.orphan_rows, state.relative, state.solver)


def _read_out(batch: _Batch, state: _State) -> AssignResult:
    """Targets and stats from the solve's choice of supplier for each kept anchor."""
    (B, A, C), G = batch.cls_logits.shape, batch.gt_boxes.shape[1]
    problem, solved, device = state.problem, state.solved, batch.cls_logits.device
    supplier = torch.full((B, A), G, dtype=torch.long, device=device).scatter_(1, problem.order, solved.choice)  # (B, A)
    gt_index = supplier.clamp(max=G - 1)
    positive = (supplier < G) & batch.gt_mask.gather(1, gt_index)  # (B, A)
    iou_kept = problem.ious.gather(1, solved.choice.clamp(max=G - 1)[:, None, :]).squeeze(1)  # (B, K)
    iou_targets = torch.zeros(B, A, device=device).scatter_(1, problem.order, iou_kept * problem.kept) * positive
    matched = torch.where(positive, supplier, BACKGROUND)
    labels = torch.where(positive, batch.gt_labels.gather(1, gt_index), C)
    box_targets = batch.gt_boxes.gather(1, gt_index[:, :, None].expand(B, A, 4)) * positive[:, :, None]
    num_gts, num_pos = batch.gt_mask.sum(), positive.sum()
    stats = {
        "num_pos": num_pos,
        "num_gts": num_gts,
        "mean_k": problem.k.sum() / num_gts,
        "pos_per_gt": num_pos / num_gts,
        "marginal_error": solved.marginal_error,
        "num_ambiguous": solved.num_ambiguous,
        "sinkhorn_iters": torch.tensor(solved.iters, device=device),
        "compacted": torch.tensor(float(not bool(state.keep.all())), device=device),
        "sparse": torch.tensor(float(state.solver == "sparse"), device=device),
        "dynamic_k": problem.k,
    }
    return AssignResult(matched, labels, box_targets, iou_targets, stats)


def _relative_cost(batch: _Batch, cfg: OTAKnobs, gt_boxes: Tensor, gt_labels: Tensor, orphans: Tensor) -> Tensor:
    """r_ij = (C_ij - C_bg,j)/eps at every anchor, as it stands outside the candidates, for the
    gts (B, G', 4) -> (B, G', A). The background cost cancels, so this needs no (B, A, C) work."""
    ious = pairwise_iou(gt_boxes, batch.pred_boxes)  # (B, G', A)
    relative = relative_class_cost(batch.cls_logits, gt_labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    relative = relative + cfg.iou_weight * regression_cost(ious, gt_boxes, batch.pred_boxes, cfg.iou_cost)
    return (relative + cfg.exclusion * ~orphans[:, :, None]) / cfg.eps


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


def _assign_in_groups(groups, points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, cfg: OTAKnobs) -> AssignResult:
    """`ota` over each group of images (gts trimmed to the group's most; each image's problem is
    independent: the same assignment), merged into one batch result."""
    B, A, C = cls_logits.shape
    G = gt_boxes.shape[1]
    device = cls_logits.device
    matched = torch.empty(B, A, dtype=torch.long, device=device)
    labels = torch.empty(B, A, dtype=torch.long, device=device)
    box_targets = torch.empty(B, A, 4, device=device)
    iou_targets = torch.empty(B, A, device=device)
    dynamic_k = torch.zeros(B, G, device=device)
    knobs = dataclasses.asdict(dataclasses.replace(cfg, bucket=False))  # each group is one batch
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
