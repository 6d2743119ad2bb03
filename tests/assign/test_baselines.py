"""Baseline assigners (FCOS, ATSS, SimOTA) against independent per-image references.

- FCOS: torchvision's own FCOS matcher (torchvision.models.detection.FCOS.compute_loss), run on
  anchor boxes of side = stride centred on our points, in float64.
- ATSS: a per-image, per-gt loop in the structure of the official ATSS code.
- SimOTA: a per-image loop in the structure of YOLOX's get_assignments / dynamic_k_matching
  (candidate compaction, a (G, n, C) one-hot focal cost, a per-gt topk, conflict resolution).
The assigners under test are batched over images with padded gts; every image of a batch must
match its reference exactly.
"""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.ops import box_iou, sigmoid_focal_loss

from otadet.assign import ASSIGNERS, BACKGROUND, atss, fcos, simota
from otadet.cli import parse_overrides
from otadet.config import ConfigError, load_model_config, make_args, model_config_from_dict, with_assigner
from otadet.criterion import build_criterion

from scenes import fcos_points as grid_points, pad_batch, random_scene as _scene

# Scenes with a wider size range (7-540 px) and tighter crowds than the OTA tests'.
random_scene = partial(_scene, log_size=(2.0, 6.3), spread=30.0, margin=2.0)


# ----------------------------------------------------------------------------- references


class _TorchvisionFCOSMatcher:
    """Stands in for `self` in torchvision's FCOS.compute_loss: the matching runs, then its
    head.compute_loss hands back the matched indices instead of computing losses."""

    center_sampling_radius = 1.5

    class head:
        @staticmethod
        def compute_loss(targets, head_outputs, anchors, matched_idxs):
            return matched_idxs


def reference_fcos(points, strides, gt_boxes):
    """torchvision's FCOS matching for one image -> matched (A,): gt index or -1."""
    anchors = torch.cat((points - strides[:, None] / 2, points + strides[:, None] / 2), 1).double()  # side = stride
    per_level = torch.unique_consecutive(strides, return_counts=True)[1].tolist()
    targets = [{"boxes": gt_boxes.double(), "labels": torch.zeros(len(gt_boxes), dtype=torch.long)}]
    (matched,) = TorchvisionFCOS.compute_loss(_TorchvisionFCOSMatcher(), targets, {}, [anchors], per_level)
    return matched


def reference_atss(points, strides, gt_boxes, *, top_k=9, anchor_size=8.0):
    """ATSS for one image, one gt at a time (the official code's steps) -> matched (A,)."""
    A = points.shape[0]
    anchors = torch.cat((points - anchor_size * strides[:, None] / 2, points + anchor_size * strides[:, None] / 2), 1)
    ious = box_iou(gt_boxes, anchors)  # (G, A)
    counts = torch.unique_consecutive(strides, return_counts=True)[1].tolist()
    best = torch.full((A,), -math.inf)
    matched = torch.full((A,), -1)
    for g, box in enumerate(gt_boxes):
        centre = (box[:2] + box[2:]) / 2
        distance = (points - centre).pow(2).sum(1).sqrt()
        candidates, start = [], 0
        for n in counts:
            candidates.append(distance[start : start + n].topk(min(top_k, n), largest=False).indices + start)
            start += n
        candidates = torch.cat(candidates)
        candidate_ious = ious[g, candidates]
        threshold = candidate_ious.mean() + candidate_ious.std()
        p = points[candidates]
        inside = torch.stack((p[:, 0] - box[0], p[:, 1] - box[1], box[2] - p[:, 0], box[3] - p[:, 1]), 1).min(1).values > 0.01
        positives = candidates[(candidate_ious >= threshold) & inside]
        better = ious[g, positives] > best[positives]  # strictly: the first gt keeps ties
        best[positives[better]] = ious[g, positives[better]]
        matched[positives[better]] = g
    return matched


def reference_simota(points, strides, cls_logits, pred_boxes, gt_boxes, gt_labels, *, radius=2.5, q=10):
    """SimOTA for one image in YOLOX's structure -> matched (A,)."""
    G, (A, C) = gt_boxes.shape[0], cls_logits.shape
    x, y = points[:, 0][None], points[:, 1][None]  # (1, A)
    x1, y1, x2, y2 = (gt_boxes[:, i, None] for i in range(4))  # (G, 1)
    in_box = torch.stack((x - x1, y - y1, x2 - x, y2 - y), -1).min(-1).values > 0
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, radius * strides[None]
    in_centre = torch.stack((x - (cx - r), y - (cy - r)), -1).min(-1).values.gt(0) & torch.stack(((cx + r) - x, (cy + r) - y), -1).min(-1).values.gt(0)
    fg = (in_box | in_centre).any(0)  # (A,) YOLOX's fg_mask
    box_and_centre = (in_box & in_centre)[:, fg]
    ious = box_iou(gt_boxes, pred_boxes[fg])  # (G, n)
    n = ious.shape[1]
    cls_cost = torch.stack([
        sigmoid_focal_loss(cls_logits[fg], F.one_hot(gt_labels[g], C).float().expand(n, C), 0.25, 2.0).sum(-1) for g in range(G)
    ])  # (G, n), summed over every class
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~box_and_centre)
    dynamic_k = torch.clamp(ious.topk(min(q, n), dim=1).values.sum(1).int(), min=1)
    matching = torch.zeros(G, n, dtype=torch.uint8)
    for g in range(G):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = 1
    several = matching.sum(0) > 1
    if several.any():
        winner = cost[:, several].min(0).indices
        matching[:, several] = 0
        matching[winner, several] = 1
    positive = matching.sum(0) > 0
    matched = torch.full((A,), -1)
    matched[fg.nonzero().squeeze(1)[positive]] = matching[:, positive].argmax(0).long()
    return matched


# ----------------------------------------------------------------------------- against the references


def _check_targets(result, i, scene, C):
    """labels, box and IoU targets follow from matched."""
    _, pred, g, lab = scene
    m = result.matched[i]
    pos = m >= 0
    assert torch.equal(result.labels[i][pos], lab[m[pos]]) and (result.labels[i][~pos] == C).all()
    assert torch.equal(result.box_targets[i][pos], g[m[pos]]) and (result.box_targets[i][~pos] == 0).all()
    expected_iou = box_iou(g, pred)[m[pos], pos.nonzero().squeeze(1)]
    torch.testing.assert_close(result.iou_targets[i][pos], expected_iou, rtol=1e-5, atol=1e-6)
    assert (result.iou_targets[i][~pos] == 0).all()


SCENES = {
    # name: (image size, [(gts, crowded, tiny), ...] one image each, batched together)
    "coco-like": ((800, 1333), [(1, False, 0), (7, False, 1), (25, False, 3)]),
    "crowded": ((800, 1333), [(100, True, 10), (12, True, 0)]),
    "small-image": ((256, 352), [(40, True, 5), (3, False, 1), (60, False, 20)]),
}


@pytest.fixture(scope="module", params=list(SCENES))
def scene_batch(request):
    (height, width), specs = SCENES[request.param]
    gen = torch.Generator().manual_seed(len(request.param))
    points, strides = grid_points(height, width)
    scenes = [
        random_scene(gen, n, points, strides, height=height, width=width, crowded=c, tiny=t) for n, c, t in specs
    ]
    if request.param == "crowded":  # exact duplicates of some gts (same class too)
        logits, pred, g, lab = scenes[1]
        scenes[1] = (logits, pred, torch.cat((g, g[:4])), torch.cat((lab, lab[:4])))
    return points, strides, scenes, pad_batch(scenes)


def test_fcos_matches_torchvision_fcos(scene_batch):
    points, strides, scenes, batch = scene_batch
    result = fcos(points, strides, *batch)
    for i, scene in enumerate(scenes):
        assert torch.equal(result.matched[i], reference_fcos(points, strides, scene[2])), f"image {i}"
        _check_targets(result, i, scene, batch[0].shape[2])
    assert result.stats["num_pos"] == (result.matched >= 0).sum() > 0


def test_atss_matches_per_gt_reference(scene_batch):
    points, strides, scenes, batch = scene_batch
    result = atss(points, strides, *batch)
    for i, scene in enumerate(scenes):
        assert torch.equal(result.matched[i], reference_atss(points, strides, scene[2])), f"image {i}"
        _check_targets(result, i, scene, batch[0].shape[2])
    assert result.stats["num_pos"] == (result.matched >= 0).sum() > 0


def test_simota_matches_yolox_structured_reference(scene_batch):
    points, strides, scenes, batch = scene_batch
    result = simota(points, strides, *batch)
    for i, scene in enumerate(scenes):
        reference = reference_simota(points, strides, *scene)
        assert torch.equal(result.matched[i], reference), f"image {i}: {(result.matched[i] != reference).sum()} differ"
        _check_targets(result, i, scene, batch[0].shape[2])
    assert result.stats["num_pos"] == (result.matched >= 0).sum() > 0


# ----------------------------------------------------------------------------- hand-made cases and edges


def test_fcos_golden_case_scale_range_and_least_area():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    strides = torch.full((4,), 8.0)  # one level; centre radius 1.5 * 8 = 12 px
    gt = torch.tensor([[[0.0, 0.0, 24.0, 8.0], [10.0, 0.0, 30.0, 8.0]]])  # areas 192 and 160
    args = (torch.zeros(1, 4, 2), gt.expand(1, 4, 2, 4)[:, :, 0].clone(), gt, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool))
    # (4,4) only in gt 0; (12,4) and (20,4) in both: the smaller gt 1 wins; (28,4) only in gt 1.
    assert fcos(points, strides, *args, scale_ranges=(0.0, math.inf)).matched.tolist() == [[0, 1, 1, 1]]
    # max(l,t,r,b) < 15: (4,4) sees gt 0 at 20; (12,4) sees gt 0 at 12, gt 1 at 18; (20,4) sees gt 1 at 10.
    assert fcos(points, strides, *args, scale_ranges=(0.0, 15.0)).matched.tolist() == [[BACKGROUND, 0, 1, BACKGROUND]]
    with pytest.raises(ValueError, match="scale_ranges"):
        fcos(points, strides, *args)  # five ranges for one level


@pytest.mark.parametrize("name", ["fcos", "atss", "simota"])
def test_no_gts_gives_all_background(name):
    points, strides = grid_points(64, 96)
    A = points.shape[0]
    for G in (0, 3):  # no gts at all, and gts that are all padding
        result = ASSIGNERS[name](
            points, strides, torch.randn(2, A, 3), torch.rand(2, A, 4) * 50, torch.zeros(2, G, 4),
            torch.zeros(2, G, dtype=torch.long), torch.zeros(2, G, dtype=torch.bool),
        )  # fmt: skip
        assert (result.matched == BACKGROUND).all() and (result.labels == 3).all()
        assert result.stats["num_pos"] == 0 and result.stats["num_gts"] == 0
        assert all(v.dim() == 0 and torch.isfinite(v.float()) for v in result.stats.values())


@pytest.mark.parametrize("name", ["fcos", "atss", "simota"])
def test_padding_gts_does_not_change_an_image(name):
    gen = torch.Generator().manual_seed(4)
    points, strides = grid_points(256, 320)
    scene = random_scene(gen, 6, points, strides, height=256, width=320)
    other = random_scene(gen, 30, points, strides, height=256, width=320, crowded=True)
    alone = ASSIGNERS[name](points, strides, *pad_batch([scene]))
    batched = ASSIGNERS[name](points, strides, *pad_batch([scene, other]))
    for field in ("matched", "labels", "box_targets", "iou_targets"):
        assert torch.equal(getattr(alone, field)[0], getattr(batched, field)[0]), field


def test_simota_duplicates_go_to_the_first_and_an_isolated_tiny_gt_gets_a_positive():
    gen = torch.Generator().manual_seed(9)
    points, strides = grid_points(256, 320)
    logits, pred, _, _ = random_scene(gen, 1, points, strides, height=256, width=320)
    gt = torch.tensor([[[40.0, 50.0, 140.0, 120.0], [40.0, 50.0, 140.0, 120.0], [250.3, 200.2, 253.1, 203.9]]])
    labels = torch.tensor([[2, 2, 5]])
    result = simota(points, strides, logits[None], pred[None], gt, labels, torch.ones(1, 3, dtype=torch.bool))
    matched = result.matched[0]
    assert (matched == 0).sum() >= 1 and (matched == 1).sum() == 0  # equal costs: the first gt takes them all
    assert (matched == 2).sum() >= 1  # 3 x 4 px, smaller than a stride, still learnt
    assert result.stats["num_ambiguous"] == (matched == 0).sum()


def test_atss_threshold_is_mean_plus_std_of_the_candidates():
    """One gt, one level of 16 points: the nine nearest anchors are candidates, those at or
    above mean + std of their IoUs with centres inside the gt are positives."""
    ys, xs = torch.meshgrid(torch.arange(4) * 8 + 4.0, torch.arange(4) * 8 + 4.0, indexing="ij")
    points, strides = torch.stack((xs.flatten(), ys.flatten()), 1), torch.full((16,), 8.0)
    gt = torch.tensor([[[2.0, 2.0, 17.0, 15.0]]])
    result = atss(points, strides, torch.zeros(1, 16, 1), torch.zeros(1, 16, 4), gt, torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool), anchor_size=2.0)
    anchors = torch.cat((points - 8, points + 8), 1)
    centre = torch.tensor([9.5, 8.5])
    nearest = (points - centre).norm(dim=1).argsort()[:9]
    ious = box_iou(gt[0], anchors)[0, nearest]
    chosen = nearest[ious >= ious.mean() + ious.std()]
    inside = (points[chosen] > gt[0, 0, :2] + 0.01).all(1) & (points[chosen] < gt[0, 0, 2:] - 0.01).all(1)
    expected = torch.full((16,), BACKGROUND)
    expected[chosen[inside]] = 0
    assert torch.equal(result.matched[0], expected) and (expected == 0).sum() >= 1


# ----------------------------------------------------------------------------- selection by name


def test_assigners_share_one_signature():
    import inspect

    assert set(ASSIGNERS) == {"ota", "fcos", "atss", "simota"}
    head = ["points", "strides", "cls_logits", "pred_boxes", "gt_boxes", "gt_labels", "gt_mask"]
    for fn in ASSIGNERS.values():
        params = inspect.signature(fn).parameters.values()
        assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == head
        assert all(p.default is not p.empty for p in params if p.kind is p.KEYWORD_ONLY)


def test_model_yaml_selects_an_assigner_and_checks_its_knobs():
    cfg = model_config_from_dict({"assigner": {"name": "fcos", "center_radius": 2, "scale_ranges": [0, 64, 128, 256, 512, math.inf]}})
    assert cfg.assigner == {"name": "fcos", "center_radius": 2.0, "scale_ranges": (0.0, 64.0, 128.0, 256.0, 512.0, math.inf)}
    criterion = build_criterion(cfg, num_classes=3)
    assert criterion.assigner.func is fcos and criterion.assigner.keywords["center_radius"] == 2.0
    with pytest.raises(ConfigError, match=r"assigner \(atss\).*did you mean 'top_k'"):
        model_config_from_dict({"assigner": {"name": "atss", "topk": 9}})
    with pytest.raises(ConfigError, match=r"did you mean 'simota'"):
        model_config_from_dict({"assigner": "simot"})
    with pytest.raises(ConfigError, match="scale_ranges"):
        model_config_from_dict({"assigner": {"name": "fcos", "scale_ranges": [0, "big"]}})
    # String knobs are checked against the Literal in the assigner's signature when the YAML loads.
    with pytest.raises(ConfigError, match=r"'assigner.iou_cost' must be one of 'log', 'linear', 'giou', got 'gio' \(did you mean 'giou'"):
        model_config_from_dict({"assigner": {"name": "ota", "iou_cost": "gio"}})
    assert model_config_from_dict({"assigner": {"name": "ota", "ambiguity": "min_area"}}).assigner["ambiguity"] == "min_area"


def test_with_assigner_swaps_the_name_and_resets_the_knobs():
    cfg = model_config_from_dict({"assigner": {"name": "ota", "top_q": 10}})
    assert with_assigner(cfg, None) is cfg and with_assigner(cfg, "ota") is cfg  # keeps the YAML's knobs
    swapped = with_assigner(cfg, "simota")
    assert swapped.assigner == {"name": "simota"} and build_criterion(swapped, 2).assigner.func is simota
    with pytest.raises(ConfigError, match=r"assigner=atts.*did you mean 'atss'"):
        with_assigner(cfg, "atts")
    # The run key, as the CLI parses it: a name or null.
    assert make_args(parse_overrides(["assigner=simota"])).assigner == "simota"
    assert make_args({}).assigner is None
    with pytest.raises(ConfigError, match="'assigner' must be str"):
        make_args({"assigner": 3})


def test_train_key_assigner_selects_the_baseline(write_data_yaml, tmp_path, monkeypatch):
    """`assigner=atss` as a train key: the run's criterion uses atss, and the checkpoint records it."""
    from otadet import Detector
    from otadet.engine import trainer

    used = []
    original = trainer.build_criterion
    monkeypatch.setattr(trainer, "build_criterion", lambda cfg, n, **kw: used.append(original(cfg, n, **kw)) or used[-1])
    data = write_data_yaml(tmp_path / "d.yaml", path=tmp_path / "shapes", builtin="shapes", generate={"seed": 1, "num_train": 4, "num_val": 2})
    model = Detector("ota_tiny.yaml", verbose=False)
    model.train(
        data=str(data), assigner="atss", epochs=1, imgsz=96, max_size=128, batch=4, workers=0, val=False,
        project=str(tmp_path / "runs"), warmup_iters=1,
    )  # fmt: skip
    assert [c.assigner.func for c in used] == [atss]
    state = torch.load(tmp_path / "runs/train/exp/weights/last.pt", map_location="cpu", weights_only=True)
    assert state["model_cfg"]["assigner"]["name"] == "atss"
    assert load_model_config("ota_tiny.yaml").assigner["name"] == "ota"  # the YAML itself is untouched
