"""CrowdHuman metric: hand-computed cases and a straightforward per-detection reference.

The reference below follows the toolkit's rules literally (loops over images, detections and
gts, lists of floats); `evaluate` is vectorised and must agree with it to the last bit on
random crowded scenes with ignore regions, clipping, ties and empty images.
"""

import math

import numpy as np
import pytest

from otadet.metrics.crowdhuman import MR_REFERENCES, evaluate


def _reference(gt_records, dt_records, thr=0.5):
    """The toolkit's rules, one detection at a time."""
    dts = {r["ID"]: r for r in dt_records}
    pooled, num_gt, num_ignore = [], 0, 0
    for g in gt_records:
        d = dts.get(g["ID"], {"dtboxes": []})
        height, width = g.get("height", d.get("height")), g.get("width", d.get("width"))

        def xyxy(b):
            x1, y1, x2, y2 = float(b[0]), float(b[1]), float(b[0]) + float(b[2]), float(b[1]) + float(b[3])
            if height is not None and width is not None:
                x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
                x2, y2 = max(min(x2, width), 0), max(min(y2, height), 0)
            return x1, y1, x2, y2

        gts = []
        for e in g["gtboxes"]:
            normal = e["tag"] == "person" and not e.get("extra", {}).get("ignore", 0)
            gts.append((xyxy(e["fbox"]), normal))
        num_gt += len(gts)
        num_ignore += sum(not n for _, n in gts)
        gts = [x for x in gts if x[1]] + [x for x in gts if not x[1]]
        dets = sorted(((xyxy(e["box"]), float(e["score"])) for e in d["dtboxes"]), key=lambda x: -x[1])
        taken = [False] * len(gts)
        for box, score in dets:
            best, best_iou, absorbed = -1, thr, False
            for j, (gbox, normal) in enumerate(gts):
                iw = min(box[2], gbox[2]) - max(box[0], gbox[0])
                ih = min(box[3], gbox[3]) - max(box[1], gbox[1])
                inter = max(0.0, iw) * max(0.0, ih)
                area = (box[2] - box[0]) * (box[3] - box[1])
                garea = (gbox[2] - gbox[0]) * (gbox[3] - gbox[1])
                if normal and not taken[j]:
                    union = area + garea - inter
                    iou = inter / union if union else math.nan
                    if iou > best_iou:
                        best, best_iou = j, iou
                elif not normal and best < 0 and area and inter / area > thr:
                    absorbed = True
                    break
            if best >= 0:
                taken[best] = True
                pooled.append((score, 1))
            elif not absorbed:
                pooled.append((score, 0))
    pooled.sort(key=lambda x: -x[0])
    n, images = num_gt - num_ignore, len(gt_records)
    tp = fp = 0.0
    recalls, precisions, fppis = [], [], []
    for _, is_tp in pooled:
        tp, fp = tp + is_tp, fp + (1 - is_tp)
        recalls.append(tp / n)
        precisions.append(tp / (tp + fp))
        fppis.append(fp / images)
    misses = []
    for ref in MR_REFERENCES:
        k = next((i for i, f in enumerate(fppis) if f >= ref), len(fppis) - 1)
        misses.append(1.0 - recalls[k])
    with np.errstate(divide="ignore"):
        mmr = float(np.exp(np.log(np.array(misses)).mean()))  # the toolkit's own expression
    ap = 0.0
    for k in range(1, len(recalls)):
        ap += (precisions[k - 1] + precisions[k]) / 2 * (recalls[k] - recalls[k - 1])
    return {"mMR": mmr, "AP": ap, "recall": recalls[-1]}


def random_scenes(num_images, rng, *, dets_per_image=(0, 40), gts_per_image=(0, 15), sized=True):
    """Crowded scenes: gts, ignore regions, detections jittered around gts plus clutter, some off-image."""
    gt_records, dt_records = [], []
    for i in range(num_images):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        gts = []
        for _ in range(int(rng.integers(*gts_per_image))):
            bw, bh = rng.uniform(8, 80), rng.uniform(16, 160)
            x, y = rng.uniform(-20, w - bw + 20), rng.uniform(-20, h - bh + 20)
            kind = rng.random()
            entry = {"fbox": [round(x, 1), round(y, 1), round(bw, 1), round(bh, 1)], "tag": "mask" if kind < 0.1 else "person"}
            if 0.1 <= kind < 0.15:
                entry["extra"] = {"ignore": 1}
            gts.append(entry)
        record = {"ID": f"img{i}", "gtboxes": gts}
        if sized:
            record.update(height=h, width=w)
        gt_records.append(record)
        dets = []
        for _ in range(int(rng.integers(*dets_per_image))):
            if gts and rng.random() < 0.7:
                x, y, bw, bh = gts[int(rng.integers(len(gts)))]["fbox"]
                x, y = x + rng.normal(0, 0.15) * bw, y + rng.normal(0, 0.15) * bh
                bw, bh = bw * np.exp(rng.normal(0, 0.2)), bh * np.exp(rng.normal(0, 0.2))
            else:
                bw, bh = rng.uniform(4, 80), rng.uniform(8, 160)
                x, y = rng.uniform(-10, w), rng.uniform(-10, h)
            score = round(float(rng.random()), 2)  # two decimals: many ties, within and across images
            dets.append({"box": [float(x), float(y), float(bw), float(bh)], "score": score, "tag": 1})
        if dets or rng.random() < 0.5:  # some images have no detection record at all
            dt_records.append({"ID": f"img{i}", "dtboxes": dets})
    return gt_records, dt_records


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_scenes(seed):
    gt, dt = random_scenes(60, np.random.default_rng(seed))
    ours, ref = evaluate(gt, dt), _reference(gt, dt)
    assert ours == ref, (ours, ref)
    assert 0 < ours["AP"] < 1 and 0 < ours["mMR"] < 1


def test_matches_reference_without_sizes_and_at_other_threshold():
    gt, dt = random_scenes(40, np.random.default_rng(5), sized=False)
    assert evaluate(gt, dt) == _reference(gt, dt)
    gt, dt = random_scenes(40, np.random.default_rng(6))
    assert evaluate(gt, dt, iou_thr=0.7) == _reference(gt, dt, thr=0.7)


def _gt(image_id, boxes, tags=None, **extra):
    tags = tags or ["person"] * len(boxes)
    return {"ID": image_id, "gtboxes": [{"fbox": b, "tag": t} for b, t in zip(boxes, tags)], **extra}


def _dt(image_id, boxes_scores):
    return {"ID": image_id, "dtboxes": [{"box": b, "score": s, "tag": 1} for b, s in boxes_scores]}


def test_ignore_region_absorbs_three_detections():
    a, b, region = [0, 0, 10, 20], [100, 0, 10, 20], [200, 0, 50, 50]
    gt = [_gt("x", [a, region, b], ["person", "mask", "person"], height=300, width=300)]
    dets = [
        (a, 0.9),  # TP
        ([205, 5, 10, 10], 0.8),  # inside the region: dropped
        ([210, 10, 20, 20], 0.7),  # dropped
        ([230, 30, 20, 20], 0.6),  # dropped (IoA 1)
        ([50, 50, 10, 10], 0.5),  # FP
        (b, 0.4),  # TP
        ([195, 0, 10, 10], 0.3),  # IoA exactly 0.5 is not > 0.5: FP
    ]
    # Pooled: TP FP TP FP; N = 2 -> recall .5 .5 1 1, precision 1 .5 2/3 .5, FPPI 0 1 1 2.
    result = evaluate(gt, [_dt("x", dets)])
    assert result["AP"] == pytest.approx((0.5 + 2 / 3) / 2 * 0.5, abs=1e-15)  # = 7/24
    assert result["recall"] == 1.0
    assert result["mMR"] == pytest.approx(0.5, abs=1e-15)  # every reference hits FPPI 1 at miss rate .5
    assert result == _reference(gt, [_dt("x", dets)])
    # The same region tagged a person instead: the three are now false positives (one may match it).
    as_person = [_gt("x", [a, region, b], height=300, width=300)]
    assert evaluate(as_person, [_dt("x", dets)])["AP"] < result["AP"]
    # extra.ignore marks an ignore region too.
    flagged = [_gt("x", [a, region, b], height=300, width=300)]
    flagged[0]["gtboxes"][1]["extra"] = {"ignore": 1}
    assert evaluate(flagged, [_dt("x", dets)]) == result


def test_curve_that_never_reaches_fppi_one():
    gt = [_gt(f"i{k}", [[10 * k, 0, 10, 20]]) for k in range(4)]
    dt = [
        _dt("i0", [([0, 0, 10, 20], 0.9)]),
        _dt("i1", [([500, 500, 10, 10], 0.8), ([10, 0, 10, 20], 0.7)]),
    ]
    # Pooled: TP FP TP over 4 images -> FPPI 0 .25 .25, miss rate .75 .75 .5. References up to
    # .1778 take the first point with FPPI >= ref (.25, miss .75); .3162 .. 1 are never reached:
    # the last point (miss .5).
    result = evaluate(gt, dt)
    assert result["mMR"] == pytest.approx(0.75 ** (6 / 9) * 0.5 ** (3 / 9), abs=1e-15)
    assert result["AP"] == pytest.approx((0.5 + 2 / 3) / 2 * 0.25, abs=1e-15)  # = 7/48
    assert result["recall"] == 0.5
    assert result == _reference(gt, dt)


def test_greedy_order_ties_and_clipping():
    # d1 (higher score) overlaps both gts and prefers g2; d2 then finds g2 taken and g1 too far: FP.
    g1, g2 = [0, 0, 10, 10], [4, 0, 10, 10]
    gt = [_gt("x", [g1, g2], height=50, width=50)]
    d1, d2 = [3, 0, 10, 10], [5, 0, 10, 10]
    assert evaluate(gt, [_dt("x", [(d1, 0.9), (d2, 0.8)])]) == pytest.approx({"mMR": 0.5, "AP": 0.0, "recall": 0.5})
    # IoU 1/3 with each of two gts: no match. Two identical gts and two identical detections: both match.
    apart = [_gt("x", [[0, 0, 10, 10], [10, 0, 10, 10]], height=50, width=50)]
    assert evaluate(apart, [_dt("x", [([5, 0, 10, 10], 0.9)])])["recall"] == 0.0
    twins = [_gt("x", [[0, 0, 10, 10], [0, 0, 10, 10]], height=50, width=50)]
    assert evaluate(twins, [_dt("x", [([0, 0, 10, 10], 0.9), ([0, 0, 10, 10], 0.9)])])["recall"] == 1.0
    # A detection sticking out of the image is clipped to it before matching (x2 to W, x1 to W-1).
    edge = [_gt("x", [[40, 0, 10, 10]], height=50, width=50)]
    assert evaluate(edge, [_dt("x", [([40, 0, 25, 10], 0.9)])])["recall"] == 1.0  # IoU 10/25 unclipped
    assert evaluate([_gt("x", [[40, 0, 10, 10]])], [_dt("x", [([40, 0, 25, 10], 0.9)])])["recall"] == 0.0


def test_empty_cases():
    gt = [_gt("x", [[0, 0, 10, 10]])]
    assert evaluate(gt, []) == {"mMR": 1.0, "AP": 0.0, "recall": 0.0}
    nothing = evaluate([_gt("x", [[0, 0, 10, 10]], ["mask"])], [_dt("x", [([0, 0, 10, 10], 0.9)])])
    assert all(math.isnan(v) for v in nothing.values())
    with pytest.raises(ValueError, match="no gt record"):
        evaluate(gt, [_dt("y", [([0, 0, 10, 10], 0.9)])])


def test_image_size_may_come_with_the_detections():
    """CrowdDet writes height/width into the detection records (the .odgt has none): same clipping."""
    gt, dt = random_scenes(30, np.random.default_rng(9))
    sizes = {g["ID"]: (g.pop("height"), g.pop("width")) for g in gt}
    unclipped = evaluate(gt, dt)
    for d in dt:
        d["height"], d["width"] = sizes[d["ID"]]
    with_sizes = evaluate(gt, dt)
    for g in gt:
        g["height"], g["width"] = sizes[g["ID"]]
    assert with_sizes == evaluate(gt, [{k: v for k, v in d.items() if k not in ("height", "width")} for d in dt])
    assert with_sizes != unclipped  # the scenes have boxes outside the image
