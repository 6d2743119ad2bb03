"""Every OTA knob of the paper's ablations, against the per-image reference or a hand-made case."""

import pytest
import torch
from scenes import fcos_points, pad_batch, random_scene
from test_ota import reference_ota, tiny_grid
from torchvision.ops import box_iou, generalized_box_iou

from otadet.assign import ota
from otadet.assign._boxes import nearest_per_level, pairwise_giou, pairwise_iou
from otadet.assign._prior import resolve_ambiguous


def test_batched_iou_and_giou_equal_torchvision():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 2, generator=gen) * 50
    boxes1 = torch.cat((a, a + torch.rand(3, 5, 2, generator=gen) * 40 + 1), 2)  # (3, 5, 4)
    b = torch.rand(3, 40, 2, generator=gen) * 50
    boxes2 = torch.cat((b, b + torch.rand(3, 40, 2, generator=gen) * 40 + 1), 2)  # (3, 40, 4)
    for i in range(3):
        torch.testing.assert_close(pairwise_iou(boxes1, boxes2)[i], box_iou(boxes1[i], boxes2[i]))
        torch.testing.assert_close(pairwise_giou(boxes1, boxes2)[i], generalized_box_iou(boxes1[i], boxes2[i]))


KNOBS = [
    {"iou_cost": "linear"},
    {"iou_cost": "giou"},
    {"fixed_k": 1},
    {"fixed_k": 10},
    {"center_prior": "nearest", "prior_radius": 3},
    {"center_prior": "nearest", "prior_radius": 5, "prior_cost": 3.0},  # soft prior: solved over all anchors
    {"ambiguity": "min_area"},
    {"ambiguity": "max_iou"},
    {"ambiguity": "min_loss"},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_knob_matches_per_image_reference(knobs):
    gen = torch.Generator().manual_seed(7)
    points, strides = fcos_points(256, 384)
    scenes = [random_scene(gen, n, points, strides, 4, height=256, width=384, crowded=c) for n, c in [(12, True), (5, False)]]
    result = ota(points, strides, *pad_batch(scenes), **knobs)
    for i, scene in enumerate(scenes):
        ref, ref_k, _ = reference_ota(points, strides, *scene, full=True, **knobs)
        assert (result.matched[i] == ref).float().mean().item() >= 0.999
        assert torch.equal(result.stats["dynamic_k"][i, : len(scene[2])], ref_k)
        assert (ref >= 0).any()


@pytest.mark.parametrize("k", [1, 5, 20])
def test_fixed_k_gives_exactly_k_positives_per_isolated_gt(k):
    """Once Sinkhorn has converged, each gt takes exactly its k cheapest candidates. (The
    official 50 iterations stop short here: 4 of 5, 6 of 10, 9 of 20.)"""
    points, strides = fcos_points(256, 320)
    gt = torch.tensor([[[20.0, 30.0, 100.0, 110.0], [200.0, 40.0, 290.0, 140.0], [120.0, 150.0, 220.0, 240.0]]])
    centre = (gt[0, :, None, :2] + gt[0, :, None, 2:]) / 2  # (3, 1, 2)
    owner = ((points[None] - centre) ** 2).sum(2).argmin(0)  # (A,) nearest gt
    # Each point predicts its nearest gt, 1.3x larger per rank of its distance to the centre:
    # every candidate's IoU cost is 1.5 * 2 * log(1.3) = 0.8 (8 eps) above the one before.
    dist = ((points - centre[owner, 0]) ** 2).sum(1) + torch.arange(points.shape[0]) * 1e-3
    rank = torch.empty_like(dist)
    for g in range(3):
        mine = (owner == g).nonzero().squeeze(1)
        rank[mine[dist[mine].argsort()]] = torch.arange(len(mine), dtype=torch.float32)
    half = (gt[0, owner, 2:] - gt[0, owner, :2]) / 2 * 1.3 ** rank[:, None].clamp(max=40)  # finite boxes
    middle = centre[owner, 0]
    pred = torch.cat((middle - half, middle + half), 1)[None]
    logits = torch.full((1, points.shape[0], 3), -5.0)
    result = ota(points, strides, logits, pred, gt, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool), fixed_k=k, iters=1000, tol=1e-3)
    assert result.stats["dynamic_k"].tolist() == [[k] * 3]
    matched = result.matched[0]
    assert torch.bincount(matched[matched >= 0], minlength=3).tolist() == [k] * 3
    for g in range(3):
        assert sorted(rank[matched == g].tolist()) == list(range(k))


def test_nearest_prior_picks_r_squared_points_per_level():
    points, strides = fcos_points(200, 300)  # level sizes 25x38 ... 2x3 (fewer than 9 points on P7)
    gen = torch.Generator().manual_seed(1)
    c = torch.rand(2, 3, 2, generator=gen) * torch.tensor([300.0, 200.0])
    boxes = torch.cat((c - 5.3, c + 7.1), 2)  # (2, 3, 4), centres off the grid: no distance ties
    chosen = nearest_per_level(points, strides, boxes, count=9)  # (2, 3, A)
    for b in range(2):
        for g in range(3):
            centre = (boxes[b, g, :2] + boxes[b, g, 2:]) / 2
            for s in strides.unique():
                level = (strides == s).nonzero().squeeze(1)
                expected = level[((points[level] - centre) ** 2).sum(1).argsort()[:9]]
                got = level[chosen[b, g, level]]
                assert sorted(got.tolist()) == sorted(expected.tolist())
                assert len(got) == min(9, len(level))
    # In the assigner: every positive is one of its gt's r^2-per-level candidates.
    scene = random_scene(gen, 6, points, strides, 3, height=200, width=300)
    result = ota(points, strides, *pad_batch([scene]), center_prior="nearest", prior_radius=3)
    cand = nearest_per_level(points, strides, scene[2][None], count=9)[0]  # (G, A)
    pos = (result.matched[0] >= 0).nonzero().squeeze(1)
    assert len(pos) > 0 and cand[result.matched[0][pos], pos].all()


def test_ambiguity_rules_on_a_hand_made_case():
    # Anchor 0 is shared by gts 0 and 1, anchor 1 by all three, anchor 2 belongs to gt 2 alone.
    candidates = torch.tensor([[[1, 1, 0], [1, 1, 0], [0, 1, 1]]], dtype=torch.bool)  # (1, G=3, A=3)
    score = torch.tensor([[[5.0, 4.0, 9.0], [2.0, 6.0, 0.0], [0.0, 3.0, 1.0]]])  # gt 2's 0.0 at anchor 0 is no candidate
    out = resolve_ambiguous(candidates, score)
    expected = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, 1, 1]]], dtype=torch.bool)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("rule", ["none", "min_area", "max_iou", "min_loss"])
def test_shared_anchor_goes_where_the_rule_says(rule):
    points, strides = tiny_grid()
    # Point (12, 12) (index 5) is a candidate of both; gt 1 is the smaller box.
    gt = torch.tensor([[[0.0, 0.0, 30.0, 30.0], [6.0, 6.0, 20.0, 20.0]]])
    labels = torch.tensor([[0, 1]])
    pred = torch.cat((points - 3, points + 3), 1)[None].clone()
    pred[0, 5] = gt[0, 0]  # the shared point predicts the LARGE box exactly, and its class
    logits = torch.full((1, 16, 2), -4.0)
    logits[0, 5, 0] = 3.0
    result = ota(points, strides, logits, pred, gt, labels, torch.ones(1, 2, dtype=torch.bool), ambiguity=rule)
    # Min area settles it for the small box before OT; every other rule (and OTA) prefers the large one.
    assert result.matched[0, 5].item() == (1 if rule == "min_area" else 0)


def test_early_stop_meets_its_tolerance():
    gen = torch.Generator().manual_seed(3)
    points, strides = fcos_points(256, 384)
    batch = pad_batch([random_scene(gen, n, points, strides, 4, height=256, width=384) for n in (4, 9)])
    fixed = ota(points, strides, *batch)
    assert fixed.stats["sinkhorn_iters"] == 50
    loose = ota(points, strides, *batch, tol=0.1)
    assert loose.stats["sinkhorn_iters"] < 50 and loose.stats["marginal_error"] < 0.1
    tight = ota(points, strides, *batch, tol=1e-4, iters=1000)
    assert tight.stats["marginal_error"] < 1e-4 < fixed.stats["marginal_error"]
    assert 50 < tight.stats["sinkhorn_iters"] < 1000
    assert (tight.matched == fixed.matched).float().mean() >= 0.999


def test_early_stop_judges_the_dropped_anchors_per_anchor():
    # Compaction folds the ~22k anchors no gt reaches into one background-only column of that
    # demand. Its error counts per anchor, as marginal_error does: judged in absolute terms, a
    # tol of 0.01 would ask 1e-6 of each of those anchors and the solve would run to its cap.
    gen = torch.Generator().manual_seed(0)
    points, strides = fcos_points(800, 1333)
    batch = pad_batch([random_scene(gen, 7, points, strides, 80, height=800, width=1333)])
    out = ota(points, strides, *batch, tol=0.01, iters=400)
    assert out.stats["compacted"] == 1
    assert out.stats["sinkhorn_iters"] < 400 and out.stats["marginal_error"] < 0.01
    assert out.stats["marginal_error"] > 1e-3  # stopped near tol, not converged far past it
