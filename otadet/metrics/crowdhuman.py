"""CrowdHuman metrics: log-average miss rate MR⁻², AP and recall, as the community toolkit scores them.

The toolkit is the one CrowdDet, cvpods and mmdetection ship (an `Image`/`Database` pair with
`compare_caltech`, `eval_MR`, `eval_AP`); `evaluate` reproduces its numbers exactly, with the
matching vectorised over images. The rules:

1. Boxes. A gt's box is `box_key` ('fbox', the full body, by default) of each `gtboxes` entry,
   [x, y, w, h] -> [x, y, x + w, y + h]. A gt is *ignored* when its tag is not 'person' (e.g.
   'mask') or `extra.ignore` is non-zero. Detections are `dtboxes[*].box` with `score`; their
   `tag` is not used. When an image's size is known (`width`/`height` of the gt record, else of
   the detection record) gt and detection boxes are clipped to it: x1 to [0, W-1], y1 to
   [0, H-1], x2 to [0, W], y2 to [0, H]. Without a size nothing is clipped.
2. Matching, per image (Caltech style). Detections in descending score order (stable);
   normal gts before ignored ones (stable). A detection matches the not yet matched normal gt
   of highest IoU, if that IoU > iou_thr (the first such gt on ties) -> a true positive, and
   the gt is taken. Only if there is none, a detection whose IoA (intersection / detection
   area) with some ignored gt is > iou_thr is dropped: it counts neither way, and one ignored
   gt can absorb any number of detections. Every other detection is a false positive.
3. The pooled list: true and false positives of all images, sorted by descending score
   (stable: image order, then per-image order). Point k has TP_k, FP_k; N = all gts − ignored
   gts; recall_k = TP_k / N, precision_k = TP_k / (TP_k + FP_k), FPPI_k = FP_k / images,
   miss rate_k = 1 − recall_k. Images are the gt records (with or without detections).
4. MR⁻²: for each reference FPPI 10^[-2, -1.75, ..., 0] (0.0100, 0.0178, 0.0316, 0.0562,
   0.1000, 0.1778, 0.3162, 0.5623, 1.0) the miss rate at the first point with FPPI ≥ the
   reference, or at the last point if the curve never gets there; MR⁻² is their geometric mean.
5. AP: trapezoids of precision over recall between consecutive points of the list,
   Σ_k≥1 (p_k−1 + p_k) / 2 · (r_k − r_k−1) — no interpolation envelope, nothing before the
   first point. recall: the last recall_k (all detections).

Edge cases the toolkit crashes on: no detection at all gives mMR 1.0, AP 0.0, recall 0.0; no
normal gt gives nan for all three. Shape letters: I = images, G = gts, D = detections,
P = (detection, gt) pairs of the same image.
"""

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["MR_REFERENCES", "evaluate", "parse_gt", "parse_dt", "match", "summarize"]

MR_REFERENCES = np.array([0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000])
_PAIRS_PER_CHUNK = 1 << 22  # (detection, gt) pairs whose overlaps are computed at once


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    boxes = np.array(xywh, np.float64).reshape(-1, 4)  # (N, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def parse_gt(gt_records: Sequence[dict], box_key: str = "fbox"):
    """gt records -> (ids [I], sizes (I, 2) h, w or nan, offsets (I+1,), boxes (G, 4) xyxy, normal (G,) bool).

    Within each image normal gts come first (stable), as the toolkit sorts them.
    """
    ids, sizes, counts, boxes, normal = [], [], [], [], []
    for i, record in enumerate(gt_records):
        ids.append(record["ID"])
        sizes.append((record.get("height", np.nan), record.get("width", np.nan)))
        entries = record.get("gtboxes", [])
        try:
            raw = [entry[box_key] for entry in entries]
        except KeyError:
            raise KeyError(f"gt record {i} (ID {record['ID']!r}): a gtboxes entry has no '{box_key}'") from None
        is_normal = np.array(
            [e.get("tag") == "person" and not (e.get("extra") or {}).get("ignore", 0) for e in entries], bool
        )  # (n,)
        order = np.argsort(~is_normal, kind="stable")  # normal first
        boxes.append(_xyxy(raw)[order])
        normal.append(is_normal[order])
        counts.append(len(entries))
    if len(set(ids)) != len(ids):
        raise ValueError("gt records: an image ID occurs twice — each image must be one record")
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return (
        ids,
        np.array(sizes, np.float64).reshape(-1, 2),
        offsets,
        np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        np.concatenate(normal) if normal else np.zeros(0, bool),
    )


def parse_dt(dt_records: Iterable[dict], ids: Sequence, sizes: np.ndarray):
    """dt records -> (offsets (I+1,), boxes (D, 4) xyxy, scores (D,)), in the gts' image order.

    Within each image detections are in descending score order (stable). Fills `sizes` (in
    place) where the gt record had none and the detection record has `height`/`width`.
    """
    index = {image_id: i for i, image_id in enumerate(ids)}
    per_image: list = [None] * len(ids)
    for record in dt_records:
        i = index.get(record["ID"])
        if i is None:
            raise ValueError(
                f"detections for image ID {record['ID']!r}, which has no gt record — evaluate against the right annotation file"
            )
        if per_image[i] is not None:
            raise ValueError(f"detections for image ID {record['ID']!r} come in two records — merge them")
        if np.isnan(sizes[i, 0]) and "height" in record and "width" in record:
            sizes[i] = (record["height"], record["width"])
        entries = record.get("dtboxes", [])
        scores = np.array([e["score"] for e in entries], np.float64)  # (n,)
        order = np.argsort(-scores, kind="stable")
        per_image[i] = (_xyxy([e["box"] for e in entries])[order], scores[order])
    empty = (np.zeros((0, 4)), np.zeros(0))
    per_image = [p if p is not None else empty for p in per_image]
    counts = [len(s) for _, s in per_image]
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    boxes = np.concatenate([b for b, _ in per_image]) if per_image else np.zeros((0, 4))
    scores = np.concatenate([s for _, s in per_image]) if per_image else np.zeros(0)
    return offsets, boxes, scores


def _clip(boxes: np.ndarray, image: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The toolkit's clip: x1 to [0, W-1], y1 to [0, H-1], x2 to [0, W], y2 to [0, H]; rows of unknown size kept."""
    h, w = sizes[image, 0], sizes[image, 1]  # (N,)
    known = ~(np.isnan(h) | np.isnan(w))
    out = boxes.copy()
    out[known, 0] = np.minimum(np.maximum(boxes[known, 0], 0), w[known] - 1)
    out[known, 1] = np.minimum(np.maximum(boxes[known, 1], 0), h[known] - 1)
    out[known, 2] = np.maximum(np.minimum(boxes[known, 2], w[known]), 0)
    out[known, 3] = np.maximum(np.minimum(boxes[known, 3], h[known]), 0)
    return out


def _pairs(dt_image: np.ndarray, gt_offsets: np.ndarray, dets: np.ndarray):
    """Every (detection, gt of its image) pair for the detections `dets`: (det index (P,), gt index (P,))."""
    image = dt_image[dets]
    start, count = gt_offsets[image], gt_offsets[image + 1] - gt_offsets[image]  # (n,)
    det = np.repeat(dets, count)  # (P,)
    first = np.repeat(np.cumsum(count) - count, count)  # (P,) where each detection's run starts
    gt = np.repeat(start, count) + (np.arange(len(det)) - first)  # (P,)
    return det, gt


def match(dt_image, dt_offsets, dt_boxes, gt_offsets, gt_boxes, gt_normal, iou_thr: float = 0.5) -> np.ndarray:
    """Caltech matching (rules 2): (D,) int8 per detection, 1 true positive, 0 false positive, -1 dropped.

    dt_image (D,) image of each detection; detections sorted by score within each image, gts
    normal-first within each image, as `parse_gt`/`parse_dt` return them.
    """
    num_dets = len(dt_boxes)
    # Candidate (detection, normal gt) pairs with IoU > thr, and detections inside an ignore region.
    cand_det, cand_gt, cand_iou = [], [], []
    in_ignore = np.zeros(num_dets, bool)  # (D,)
    pairs_per_det = (gt_offsets[1:] - gt_offsets[:-1])[dt_image]  # (D,)
    chunk = np.cumsum(pairs_per_det) // _PAIRS_PER_CHUNK  # (D,) nondecreasing
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(chunk)) + 1, [num_dets]])
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-area boxes give nan, never > thr
        for start, stop in zip(bounds[:-1], bounds[1:]):
            det, gt = _pairs(dt_image, gt_offsets, np.arange(start, stop))
            if not len(det):
                continue
            # Pairs that do not overlap have IoU and IoA 0 (or nan): never > thr, so they go first.
            iw = np.minimum(dt_boxes[det, 2], gt_boxes[gt, 2]) - np.maximum(dt_boxes[det, 0], gt_boxes[gt, 0])  # (P,)
            det, gt, iw = det[iw > 0], gt[iw > 0], iw[iw > 0]
            ih = np.minimum(dt_boxes[det, 3], gt_boxes[gt, 3]) - np.maximum(dt_boxes[det, 1], gt_boxes[gt, 1])
            det, gt, iw, ih = det[ih > 0], gt[ih > 0], iw[ih > 0], ih[ih > 0]
            d, g = dt_boxes[det], gt_boxes[gt]  # (P', 4) overlapping pairs only
            inter = iw * ih  # (P',)
            dt_area = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
            gt_area = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
            normal = gt_normal[gt]
            iou = inter / (dt_area + gt_area - inter)
            hit = normal & (iou > iou_thr)
            cand_det.append(det[hit])
            cand_gt.append(gt[hit])
            cand_iou.append(iou[hit])
            ioa = inter / dt_area
            in_ignore[det[~normal & (ioa > iou_thr)]] = True
    cand_det = np.concatenate(cand_det) if cand_det else np.zeros(0, np.int64)
    cand_gt = np.concatenate(cand_gt) if cand_gt else np.zeros(0, np.int64)
    cand_iou = np.concatenate(cand_iou) if cand_iou else np.zeros(0)

    # Greedy in score order within each image. Round r handles the r-th detection of every
    # image at once: images never share gts, so the rounds are the only sequential part.
    rank = np.arange(num_dets) - dt_offsets[dt_image]  # (D,) position within its image
    order = np.lexsort((cand_gt, -cand_iou, cand_det, rank[cand_det]))  # by round, detection, best IoU first
    cand_det, cand_gt = cand_det[order], cand_gt[order]
    round_bounds = np.searchsorted(rank[cand_det], np.arange(int(rank.max(initial=-1)) + 2))
    gt_taken = np.zeros(len(gt_boxes), bool)  # (G,)
    matched = np.zeros(num_dets, bool)  # (D,)
    for r in range(len(round_bounds) - 1):
        lo, hi = round_bounds[r], round_bounds[r + 1]
        if lo == hi:
            continue
        det, gt = cand_det[lo:hi], cand_gt[lo:hi]
        free = ~gt_taken[gt]
        det, gt = det[free], gt[free]
        if not len(det):
            continue
        first = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])  # each detection's best free gt
        gt_taken[gt[first]] = True
        matched[det[first]] = True
    return np.where(matched, 1, np.where(in_ignore, -1, 0)).astype(np.int8)


def summarize(scores: np.ndarray, outcome: np.ndarray, num_gt: int, num_images: int) -> dict:
    """Pooled-list metrics (rules 3-5) from per-detection scores and outcomes (1 TP, 0 FP, -1 dropped)."""
    keep = outcome >= 0
    order = np.argsort(-scores[keep], kind="stable")
    tp_flags = outcome[keep][order] == 1
    if num_gt == 0:
        return {"mMR": float("nan"), "AP": float("nan"), "recall": float("nan")}
    if not len(tp_flags):
        return {"mMR": 1.0, "AP": 0.0, "recall": 0.0}
    tp = np.cumsum(tp_flags, dtype=np.float64)  # (K,)
    fp = np.cumsum(~tp_flags, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / (tp + fp)
    fppi = fp / num_images
    missrate = 1.0 - recall
    at = np.minimum(np.searchsorted(fppi, MR_REFERENCES, side="left"), len(fppi) - 1)  # first FPPI >= ref, else last
    with np.errstate(divide="ignore"):
        mmr = float(np.exp(np.log(missrate[at]).mean()))
    # Accumulated left to right like the toolkit's loop, so the float sum is the same.
    area = (precision[:-1] + precision[1:]) / 2 * (recall[1:] - recall[:-1])
    ap = float(np.cumsum(area)[-1]) if len(area) else 0.0
    return {"mMR": mmr, "AP": ap, "recall": float(recall[-1])}


def evaluate(gt_records: Sequence[dict], dt_records: Iterable[dict], iou_thr: float = 0.5, *, box_key: str = "fbox") -> dict:
    """CrowdHuman MR⁻², AP and recall of `dt_records` against `gt_records` (rules in the module docstring).

    gt_records: parsed .odgt lines {"ID", "gtboxes": [{"fbox"/"vbox": [x, y, w, h], "tag", "extra"}],
    optional "height", "width"}; dt_records: {"ID", "dtboxes": [{"box": [x, y, w, h], "score", "tag"}],
    optional "height", "width"}. Returns {"mMR", "AP", "recall"} as floats.
    """
    ids, sizes, gt_offsets, gt_boxes, gt_normal = parse_gt(gt_records, box_key)
    dt_offsets, dt_boxes, scores = parse_dt(dt_records, ids, sizes)
    num_images = len(ids)
    gt_image = np.repeat(np.arange(num_images), np.diff(gt_offsets))  # (G,)
    dt_image = np.repeat(np.arange(num_images), np.diff(dt_offsets))  # (D,)
    outcome = match(
        dt_image, dt_offsets, _clip(dt_boxes, dt_image, sizes), gt_offsets, _clip(gt_boxes, gt_image, sizes),
        gt_normal, iou_thr,
    )  # fmt: skip
    return summarize(scores, outcome, int(gt_normal.sum()), num_images)
