"""Crowding and size statistics of a COCO-format dataset (the built-in shapes data is checked with them).

Boxes are COCO [x, y, w, h]; N = boxes in one image.
"""

import json
import os

import numpy as np

__all__ = ["box_iou_xywh", "shapes_stats", "crowd_stats"]


def box_iou_xywh(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of COCO boxes (N, 4) [x, y, w, h] -> (N, N)."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    iw = (np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])).clip(0)
    ih = (np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])).clip(0)
    inter = iw * ih  # (N, N)
    area = boxes[:, 2] * boxes[:, 3]
    return inter / np.maximum(area[:, None] + area[None] - inter, 1e-9)


def shapes_stats(ann_file: str | os.PathLike) -> dict:
    """Crowding and size statistics of a COCO json (sizes are sqrt(w*h) of the boxes, px).

    Returns num_images, num_objects, mean_objects, min_objects, max_objects, num_classes,
    frac_overlap_iou03 (objects whose box has IoU > 0.3 with another box in the image),
    min_size, max_size, max_size_frac (largest size / its image's shorter side),
    frac_small / frac_medium / frac_large (COCO area ranges 32², 96² on box area),
    boxes_inside (every box within its image).
    """
    with open(ann_file, encoding="utf-8") as f:
        data = json.load(f)
    by_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann["bbox"])
    counts, overlapping, sizes, rel_sizes, inside = [], 0, [], [], True
    for img in data["images"]:
        boxes = np.array(by_image[img["id"]], np.float64).reshape(-1, 4)  # (N, 4) xywh
        counts.append(len(boxes))
        if len(boxes) == 0:
            continue
        iou = box_iou_xywh(boxes)
        np.fill_diagonal(iou, 0.0)
        overlapping += int((iou.max(1) > 0.3).sum())
        size = np.sqrt(boxes[:, 2] * boxes[:, 3])
        sizes.append(size)
        rel_sizes.append(size / min(img["width"], img["height"]))
        inside &= bool(
            np.all(boxes[:, :2] >= 0)
            and np.all(boxes[:, 0] + boxes[:, 2] <= img["width"])
            and np.all(boxes[:, 1] + boxes[:, 3] <= img["height"])
        )
    size = np.concatenate(sizes) if sizes else np.zeros(0)
    area = size**2
    total = max(len(size), 1)
    return {
        "num_images": len(counts),
        "num_objects": int(sum(counts)),
        "mean_objects": float(np.mean(counts)) if counts else 0.0,
        "min_objects": int(min(counts, default=0)),
        "max_objects": int(max(counts, default=0)),
        "num_classes": len({ann["category_id"] for ann in data["annotations"]}),
        "frac_overlap_iou03": overlapping / total,
        "min_size": float(size.min()) if len(size) else 0.0,
        "max_size": float(size.max()) if len(size) else 0.0,
        "max_size_frac": float(np.concatenate(rel_sizes).max()) if rel_sizes else 0.0,
        "frac_small": float((area < 32**2).sum() / total),
        "frac_medium": float(((area >= 32**2) & (area < 96**2)).sum() / total),
        "frac_large": float((area >= 96**2).sum() / total),
        "boxes_inside": inside,
    }


def crowd_stats(odgt_file: str | os.PathLike, box: str = "fbox") -> dict:
    """CrowdHuman's crowding statistics of an .odgt file (Shao et al. 2018, Tables 1 and 3).

    Only 'person' boxes that are not extra.ignore count. Returns num_images, persons_per_image,
    max_persons, and pairs_iou{03,05,07}: pairs of persons per image whose `box` IoU exceeds 0.3 / 0.5 / 0.7.
    """
    counts, pairs = [], {0.3: 0, 0.5: 0, 0.7: 0}
    with open(odgt_file, encoding="utf-8") as f:
        for line in filter(str.strip, f):
            boxes = np.array(
                [g[box] for g in json.loads(line)["gtboxes"] if g.get("tag") == "person" and not g.get("extra", {}).get("ignore", 0)],
                np.float64,
            ).reshape(-1, 4)  # (N, 4) xywh
            counts.append(len(boxes))
            iou = np.triu(box_iou_xywh(boxes), k=1)  # each pair once
            for threshold in pairs:
                pairs[threshold] += int((iou > threshold).sum())
    n = max(len(counts), 1)
    return {
        "num_images": len(counts),
        "persons_per_image": float(np.mean(counts)) if counts else 0.0,
        "max_persons": int(max(counts, default=0)),
        **{f"pairs_iou{str(t).replace('.', '')}": v / n for t, v in pairs.items()},
    }
