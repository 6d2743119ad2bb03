"""OTA on the inputs that break assigners: huge, tiny, duplicate and many gts, saturated logits,
ignore regions. Each result must be finite and follow the target convention."""

import torch
from scenes import fcos_points, pad_batch, random_scene

from otadet.assign import BACKGROUND, IGNORE, ota
from otadet.assign._types import mark_ignored


def _check(result, gt_mask, num_classes):
    """Finite stats; positives point at real gts and carry their label; the rest is background."""
    for key, value in result.stats.items():
        assert torch.isfinite(value.float()).all(), key
    positive = result.matched >= 0
    assert ((result.matched == BACKGROUND) | positive).all()
    assert gt_mask.gather(1, result.matched.clamp(min=0))[positive].all()
    assert (result.labels[~positive] == num_classes).all()
    assert torch.isfinite(result.box_targets).all() and torch.isfinite(result.iou_targets).all()


def test_gt_covering_the_whole_image():
    points, strides = fcos_points(256, 384)
    gt = torch.tensor([[[0.0, 0.0, 384.0, 256.0]]])
    pred = torch.cat((points - 40, points + 40), 1)[None]
    result = ota(points, strides, torch.randn(1, points.shape[0], 3), pred, gt, torch.tensor([[2]]), torch.ones(1, 1, dtype=torch.bool))
    _check(result, torch.ones(1, 1, dtype=torch.bool), 3)
    assert result.stats["num_pos"] >= 1 and (result.labels[result.matched >= 0] == 2).all()


def test_gts_smaller_than_a_stride_each_get_a_positive():
    points, strides = fcos_points(256, 384)
    # 3-7 px boxes, some holding a stride-8 point, some none at all (between the points).
    gt = torch.tensor([[[40.5, 40.5, 43.5, 43.5], [100.0, 60.0, 107.0, 66.0], [200.3, 120.2, 202.9, 123.6], [300.0, 200.0, 305.0, 205.0]]])
    gen = torch.Generator().manual_seed(0)
    ltrb = strides[:, None] * torch.exp(torch.randn(points.shape[0], 4, generator=gen) * 0.6 + 1.0)
    pred = torch.cat((points - ltrb[:, :2], points + ltrb[:, 2:]), 1)[None]
    mask = torch.ones(1, 4, dtype=torch.bool)
    result = ota(points, strides, torch.randn(1, points.shape[0], 2, generator=gen) - 4, pred, gt, torch.tensor([[0, 1, 0, 1]]), mask)
    _check(result, mask, 2)
    assert set(result.matched[0][result.matched[0] >= 0].tolist()) == {0, 1, 2, 3}


def test_500_gts_and_duplicates():
    gen = torch.Generator().manual_seed(5)
    points, strides = fcos_points(192, 256)  # 500 gts on 1023 anchors: their k's exceed the anchors
    logits, pred, gt, labels = random_scene(gen, 500, points, strides, 3, height=192, width=256, crowded=True)
    gt[1], labels[1] = gt[0], labels[0]  # an exact duplicate
    batch = pad_batch([(logits, pred, gt, labels), random_scene(gen, 2, points, strides, 3, height=192, width=256)])
    result = ota(points, strides, *batch)
    _check(result, batch[4], 3)
    # So many gts overlap that a crowd's k's outgrow its candidates: the full problem ships the
    # excess to non-candidates, and the compacted solve must find those columns (certified).
    assert result.stats["compacted"] == 1
    assert torch.equal(result.matched, ota(points, strides, *batch, compact=False).matched)
    k = result.stats["dynamic_k"]
    assert k.shape == (2, 500) and (k[batch[4]] >= 1).all() and (k[~batch[4]] == 0).all()
    assert k[0, 0] == k[0, 1]  # duplicates supply alike
    assert result.stats["num_pos"] > 500


def test_saturated_logits():
    gen = torch.Generator().manual_seed(2)
    points, strides = fcos_points(192, 256)
    scenes = [random_scene(gen, n, points, strides, 5, height=192, width=256, crowded=True) for n in (10, 3)]
    logits, pred, gt, labels, mask = pad_batch(scenes)
    saturated = torch.where(torch.rand(logits.shape, generator=gen) < 0.5, -50.0, 50.0)
    for knobs in ({}, {"iou_cost": "giou", "ambiguity": "min_loss"}, {"center_prior": "nearest", "prior_cost": 5.0}):
        result = ota(points, strides, saturated, pred, gt, labels, mask, **knobs)
        _check(result, mask, 5)
        assert result.stats["num_pos"] > 0


def test_ignore_region_anchor_not_foreground_is_ignored():
    """Ignore regions after OTA (criterion calls mark_ignored after any assigner)."""
    gen = torch.Generator().manual_seed(4)
    points, strides = fcos_points(256, 384)
    scene = random_scene(gen, 4, points, strides, 3, height=256, width=384)
    batch = pad_batch([scene])
    result = ota(points, strides, *batch)
    ignore = torch.cat((scene[2][:1], torch.tensor([[300.0, 10.0, 380.0, 60.0]])))[None]  # over gt 0, and elsewhere
    out = mark_ignored(result, points, ignore, torch.ones(1, 2, dtype=torch.bool))
    x, y = points[:, 0], points[:, 1]
    inside = ((x >= ignore[0, :, None, 0]) & (y >= ignore[0, :, None, 1]) & (x <= ignore[0, :, None, 2]) & (y <= ignore[0, :, None, 3])).any(0)
    assert torch.equal(out.matched[0][inside & (result.matched[0] >= 0)], result.matched[0][inside & (result.matched[0] >= 0)])
    assert (out.matched[0][inside & (result.matched[0] < 0)] == IGNORE).all()
    assert (out.matched[0][~inside] == result.matched[0][~inside]).all()
    assert (inside & (result.matched[0] >= 0)).any() and (inside & (result.matched[0] < 0)).any()


def test_stats_are_0_dim_except_per_gt_k():
    points, strides = fcos_points(128, 128)
    gen = torch.Generator().manual_seed(0)
    for n in (0, 3):
        batch = pad_batch([random_scene(gen, max(n, 1), points, strides, 2, height=128, width=128)])
        if n == 0:
            batch = (*batch[:4], torch.zeros_like(batch[4]))
        stats = ota(points, strides, *batch).stats
        assert {k for k, v in stats.items() if v.ndim} == {"dynamic_k"}
        assert stats["dynamic_k"].shape == batch[4].shape
        assert {"num_pos", "num_gts", "mean_k", "marginal_error", "num_ambiguous", "sinkhorn_iters"} <= stats.keys()
