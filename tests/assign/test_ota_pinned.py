"""OTA pinned: the assignment of a few fixed seeded problems, exactly as the code gave it when
the file tests/assign/data/ota_pinned.json was written (run this file to rewrite it).

Not a check of correctness (test_ota.py holds the assigner against a per-image reference):
a tripwire, so that a refactor or a speed-up that changes any anchor's matched gt, label or
any gt's k fails here. The problems are generated in this file, not from scenes.py, so that
editing the shared scenes does not move them: gts of many sizes, tiny ones (smaller than the
point spacing), heavily overlapping ones, a duplicate, padding, an image without gts, gt
counts far apart (the CPU solves them in separate groups) and an ignore region (crowd).
Shapes: B=batch, A=anchor points, G=gts.
"""

import json
from pathlib import Path

import pytest
import torch

from otadet.assign import BACKGROUND, ota
from otadet.assign._types import mark_ignored

DATA = Path(__file__).parent / "data" / "ota_pinned.json"
HEIGHT, WIDTH, NUM_CLASSES = 256, 384, 5

# name -> (OTA knobs, seeds): the default solve, the dense and the uncompacted paths, and the
# ablations; the slower solves over every anchor on one problem only.
CASES = {
    "default": ({}, (0, 1, 2)),
    "dense": ({"sparse": False}, (0,)),
    "all_anchors": ({"compact": False, "bucket": False}, (1,)),
    "nearest_prior": ({"center_prior": "nearest", "prior_radius": 3}, (0, 2)),
    "soft_prior": ({"center_prior": "nearest", "prior_cost": 3.0}, (2,)),
    "min_area": ({"ambiguity": "min_area"}, (0, 1)),
    "fixed_k": ({"fixed_k": 3}, (1, 2)),
    "giou_tol": ({"iou_cost": "giou", "tol": 1e-3}, (0,)),
}
PINNED = [(case, seed) for case, (_, seeds) in CASES.items() for seed in seeds]


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    """P3-P7 cell centres of a HEIGHT x WIDTH input -> points (A, 2), strides (A,)."""
    pts, st = [], []
    for s in (8, 16, 32, 64, 128):
        h, w = -(-HEIGHT // s), -(-WIDTH // s)
        ys, xs = torch.meshgrid(torch.arange(h) * s + s / 2, torch.arange(w) * s + s / 2, indexing="ij")
        pts.append(torch.stack((xs.flatten(), ys.flatten()), 1).float())
        st.append(torch.full((h * w,), float(s)))
    return torch.cat(pts), torch.cat(st)


def _gts(gen: torch.Generator, sizes: list[tuple[float, float]], centres: torch.Tensor) -> torch.Tensor:
    """(G, 4) xyxy boxes of the given sides around `centres` (G, 2), inside the image."""
    wh = torch.tensor(sizes)
    wh = wh * torch.empty(len(sizes), 2).uniform_(0.9, 1.1, generator=gen)
    boxes = torch.cat((centres - wh / 2, centres + wh / 2), 1)
    return torch.stack((boxes[:, 0].clamp(0, WIDTH - 2), boxes[:, 1].clamp(0, HEIGHT - 2),
                        boxes[:, 2].clamp(2, WIDTH), boxes[:, 3].clamp(2, HEIGHT)), 1)  # fmt: skip


def problem(seed: int) -> dict:
    """One batch of 4 images: (8 gts: 3 tiny, 1 duplicate), (5 overlapping), (1), (none)."""
    gen = torch.Generator().manual_seed(seed)
    points, strides = _points()
    A = points.shape[0]
    scattered = torch.rand(8, 2, generator=gen) * torch.tensor([WIDTH - 60.0, HEIGHT - 60.0]) + 30
    image0 = _gts(gen, [(3, 4), (6, 5), (2.5, 2.5), (40, 60), (120, 90), (24, 18), (70, 70), (70, 70)], scattered)
    image0[7] = image0[6]  # a duplicate gt
    pile = torch.tensor([[190.0, 128.0]]) + torch.randn(5, 2, generator=gen) * 12
    image1 = _gts(gen, [(90, 120), (80, 110), (100, 100), (30, 40), (60, 50)], pile)
    image2 = _gts(gen, [(150, 200)], torch.tensor([[200.0, 130.0]]))
    images = [image0, image1, image2, torch.zeros(0, 4)]
    B, G = len(images), max(len(g) for g in images)
    gt_boxes = torch.zeros(B, G, 4)
    gt_mask = torch.zeros(B, G, dtype=torch.bool)
    for i, g in enumerate(images):
        gt_boxes[i, : len(g)], gt_mask[i, : len(g)] = g, True
    gt_labels = torch.randint(0, NUM_CLASSES, (B, G), generator=gen) * gt_mask
    ltrb = strides[:, None] * torch.exp(torch.randn(B, A, 4, generator=gen) * 0.6 + 1.0)  # (B, A, 4)
    pred_boxes = torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), 2)
    cls_logits = torch.randn(B, A, NUM_CLASSES, generator=gen) * 1.5 - 4.0
    ignore_boxes = torch.tensor([[[330.0, 10.0, 370.0, 50.0]]] * B)  # (B, 1, 4) a crowd region, top right
    ignore_mask = torch.tensor([[True], [True], [False], [False]])  # images 0 and 1
    return dict(points=points, strides=strides, cls_logits=cls_logits, pred_boxes=pred_boxes, gt_boxes=gt_boxes,
                gt_labels=gt_labels, gt_mask=gt_mask, ignore_boxes=ignore_boxes, ignore_mask=ignore_mask)  # fmt: skip


def assignment(seed: int, knobs: dict) -> dict:
    """The assignment of problem(seed) under `knobs`, as stored: every anchor that is not
    background as [image, anchor, matched gt, label], and each image's k per real gt."""
    p = problem(seed)
    args = [p[k] for k in ("points", "strides", "cls_logits", "pred_boxes", "gt_boxes", "gt_labels", "gt_mask")]
    result = mark_ignored(ota(*args, **knobs), p["points"], p["ignore_boxes"], p["ignore_mask"])
    b, a = (result.matched != BACKGROUND).nonzero(as_tuple=True)
    k = result.stats["dynamic_k"]
    return {
        "anchors": [[i, j, m, c] for i, j, m, c in zip(b.tolist(), a.tolist(), result.matched[b, a].tolist(), result.labels[b, a].tolist())],
        "dynamic_k": [k[i, : int(n)].tolist() for i, n in enumerate(p["gt_mask"].sum(1).tolist())],
        "num_pos": int(result.stats["num_pos"]),
    }


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("case, seed", PINNED, ids=[f"{c}-{s}" for c, s in PINNED])
def test_assignment_is_pinned(pinned, case, seed):
    expected = pinned[f"{case}/{seed}"]
    got = assignment(seed, CASES[case][0])
    assert got["dynamic_k"] == expected["dynamic_k"]
    assert got["num_pos"] == expected["num_pos"]
    assert got["anchors"] == expected["anchors"]  # every non-background anchor: image, anchor, gt, label


def test_pinned_problems_cover_what_they_claim(pinned):
    """Tiny gts get positives, some anchors are ignored, and the empty image stays background."""
    assert sorted(pinned) == sorted(f"{case}/{seed}" for case, seed in PINNED)
    for key, value in pinned.items():
        rows = torch.tensor(value["anchors"])
        assert (rows[rows[:, 0] == 0, 2] == 2).any(), key  # the 2.5 px gt of image 0 has a positive
        assert (rows[:, 2] == -2).any(), key  # the crowd region ignores some anchors
        assert not (rows[:, 0] == 3).any(), key  # image 3 has no gts and no ignore hit: all background


if __name__ == "__main__":  # python tests/assign/test_ota_pinned.py: rewrite the pinned file from the current code
    DATA.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)  # as tests/conftest.py
    table = {f"{case}/{seed}": assignment(seed, CASES[case][0]) for case, seed in PINNED}
    DATA.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    print(f"wrote {DATA}: {len(table)} assignments, {sum(len(v['anchors']) for v in table.values())} anchors")
