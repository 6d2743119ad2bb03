"""The assignment visualiser's input: one image and its gt boxes.

Where the labels come from (`otadet assign` keys):
    no source, no labels            the first image of the `split` of `data`
    source=<image id> or <name>     that image of the split of `data` (by COCO id / file name)
    source=<path>, no labels        the image of the split of `data` with that file name
    source=<path>, labels=<x>.txt   YOLO: `cls xc yc w h` per line, normalised by the image size
    source=<path>, labels=<x>.json  COCO: the image of the json whose file_name is the source's
Boxes are xyxy in the original image's pixels. Shapes: N = gts, K = ignore regions.
"""

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..datasets.base import read_image
from ..datasets.data_yaml import load_data
from ..datasets.loader import build_dataset

__all__ = ["LabelledImage", "load_labelled_image"]


class LabelledImage(NamedTuple):
    path: str
    image: np.ndarray  # (H, W, 3) uint8 BGR, as read
    boxes: np.ndarray  # (N, 4) float32 xyxy original pixels
    labels: np.ndarray  # (N,) int64 contiguous class
    ignore_boxes: np.ndarray  # (K, 4) float32 (COCO iscrowd, CrowdHuman masks)
    names: list[str] | None  # class names where the labels' file has them


def load_labelled_image(source, labels: str | None, data: str, split: str) -> LabelledImage:
    """One image with its gts, as the module docstring lists; bad input raises one clear ValueError/FileNotFoundError."""
    if labels is not None:
        if source is None or not Path(str(source)).is_file():
            raise FileNotFoundError(f"labels={labels} needs source= an existing image file, got source={source!r}")
        suffix = Path(labels).suffix.lower()
        if not Path(labels).is_file():
            raise FileNotFoundError(f"labels={labels}: file not found (a YOLO .txt or a COCO .json)")
        if suffix == ".txt":
            return _from_yolo_txt(Path(source), Path(labels))
        if suffix == ".json":
            return _from_coco_json(Path(source), Path(labels))
        raise ValueError(f"labels={labels}: expected a YOLO .txt or a COCO .json file")
    return _from_data(source, data, split)


def _read(path: Path) -> np.ndarray:
    image = read_image(path)
    if image is None:
        raise FileNotFoundError(f"source={path}: cannot read the image (missing or not an image)")
    return image


def _from_yolo_txt(source: Path, labels: Path) -> LabelledImage:
    image = _read(source)
    h, w = image.shape[:2]
    rows = []
    for number, line in enumerate(labels.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.split():
            continue
        try:
            row = [float(v) for v in line.split()]
        except ValueError:
            row = []
        if len(row) != 5 or not np.all(np.isfinite(row)) or row[0] != int(row[0]) or row[0] < 0 or min(row[3:]) <= 0:
            raise ValueError(f"{labels}:{number}: expected 'cls xc yc w h' (class >= 0, normalised sizes > 0), got {line.strip()!r}")
        rows.append(row)
    rows = np.array(rows, np.float64).reshape(-1, 5)
    centre, size = rows[:, 1:3] * (w, h), rows[:, 3:5] * (w, h)
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, (w, h, w, h)).astype(np.float32)
    return LabelledImage(str(source), image, boxes, rows[:, 0].astype(np.int64), np.zeros((0, 4), np.float32), None)


def _from_coco_json(source: Path, labels: Path) -> LabelledImage:
    try:
        coco = json.loads(labels.read_text(encoding="utf-8"))
        images, annotations, categories = coco["images"], coco.get("annotations", []), coco.get("categories", [])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"labels={labels}: not a COCO detection json ({type(e).__name__}: {e})") from e
    entry = next((im for im in images if Path(str(im.get("file_name", ""))).name == source.name), None)
    if entry is None:
        raise ValueError(f"labels={labels}: no image with file_name {source.name} — pass the json that lists source={source}")
    cat_ids = sorted(c["id"] for c in categories)  # contiguous label = rank of the category id (as the COCO reader)
    label_of = {c: i for i, c in enumerate(cat_ids)}
    names_of = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    rows = {0: [], 1: []}  # iscrowd -> (xyxy, label)
    for ann in annotations:
        if ann.get("image_id") != entry["id"] or ann.get("category_id") not in label_of:
            continue
        x, y, bw, bh = ann["bbox"]
        rows[1 if ann.get("iscrowd", 0) else 0].append(([x, y, x + bw, y + bh], label_of[ann["category_id"]]))
    image = _read(source)
    boxes = np.array([b for b, _ in rows[0]], np.float32).reshape(-1, 4)
    return LabelledImage(
        str(source), image, boxes, np.array([c for _, c in rows[0]], np.int64),
        np.array([b for b, _ in rows[1]], np.float32).reshape(-1, 4), [names_of[c] for c in cat_ids],
    )  # fmt: skip


def _from_data(source, data: str, split: str) -> LabelledImage:
    spec = load_data(data)
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: use split=val or split=train")
    dataset = build_dataset(spec, split, imgsz=800, max_size=1333, augment=False)  # only its annotations are read
    index = _find(dataset, source, data, split)
    boxes, labels, ignores = dataset.annotations(index)
    path = dataset.image_path(index)
    image = _read(path)
    ann_h, ann_w = dataset.image_size(dataset.ids[index])
    h, w = image.shape[:2]
    ratio = np.array([w / ann_w, h / ann_h] * 2, np.float32)  # a file whose size differs from the annotation's
    return LabelledImage(str(path), image, boxes * ratio, labels.copy(), ignores * ratio, list(spec.names))


def _find(dataset, source, data: str, split: str) -> int:
    """Index in `dataset` of source: None = the first image, an int = an image id, else a file name or path."""
    if source is None:
        return 0
    if isinstance(source, int) and not isinstance(source, bool):
        if source in dataset.ids:
            return dataset.ids.index(source)
        raise ValueError(f"source={source}: no image id {source} in the {split} split of {data} (ids {dataset.ids[0]}..{dataset.ids[-1]})")
    name = os.path.basename(str(source))
    for i in range(len(dataset)):
        if dataset.image_path(i).name == name:
            return i
    raise ValueError(
        f"source={source}: no image named {name} in the {split} split of {data} — pass labels= (a YOLO .txt or a "
        "COCO .json) for an image outside the dataset, or data=/split= of the dataset that holds it"
    )
