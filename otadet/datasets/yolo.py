"""The YOLO-txt reader: `images/<split>/*.jpg` with `labels/<split>/<stem>.txt`.

Each label line is `cls xc yc w h`, the box centre and size normalised by the image's width
and height; `cls` indexes the data YAML's `names`. An image without a label file (or with an
empty one) is a background image. Image sizes come from the file headers, cached in
`labels/<split>.sizes.json`.

Bad input is skipped, never fatal while an image remains: lines with a wrong column count or
non-numbers (file:line), class ids outside 0..C-1, boxes of negative or zero size (counted).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.log import LOGGER
from .base import IMAGE_SUFFIXES, DetectionDataset, Transform, image_sizes

__all__ = ["YoloDetection", "labels_dir_for"]

_MAX_REPORTED = 10


def labels_dir_for(images_dir: str | os.PathLike) -> Path:
    """The YOLO convention: the last 'images' component of the path becomes 'labels'."""
    parts = list(Path(images_dir).parts)
    if "images" not in parts:
        raise ValueError(f"{images_dir}: a YOLO image folder must sit under an 'images' folder (images/train, images/val)")
    k = len(parts) - 1 - parts[::-1].index("images")
    parts[k] = "labels"
    return Path(*parts)


def _read_labels(path: Path, num_classes: int, bad: list[str], counts: dict) -> np.ndarray:
    """(n, 5) float64 rows cls, xc, yc, w, h of one label file; malformed lines recorded in `bad`."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            bad.append(f"{path}:{number}: {len(fields)} columns, expected 5 (cls xc yc w h)")
            continue
        try:
            row = [float(v) for v in fields]
        except ValueError:
            bad.append(f"{path}:{number}: not numbers: {line.strip()!r}")
            continue
        if not np.all(np.isfinite(row)):
            bad.append(f"{path}:{number}: not finite: {line.strip()!r}")
            continue
        if row[0] != int(row[0]) or not 0 <= row[0] < num_classes:
            counts["unknown_class"] += 1
            continue
        if row[3] <= 0 or row[4] <= 0:
            counts["negative"] += 1
            continue
        rows.append(row)
    return np.array(rows, np.float64).reshape(-1, 5)


class YoloDetection(DetectionDataset):
    """The images of `images_dir` with YOLO txt labels from `labels_dir` (see `DetectionDataset`).

    Image ids are 1..I in sorted file-name order.
    """

    format = "yolo"

    def __init__(
        self,
        *,
        images_dir: str | os.PathLike,
        labels_dir: str | os.PathLike | None = None,
        transform: Transform,
        names: Sequence[str],
    ):
        images_dir = Path(images_dir)
        self.labels_dir = Path(labels_dir) if labels_dir is not None else labels_dir_for(images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{images_dir}: image folder not found")
        paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        cache = self.labels_dir.parent / f"{self.labels_dir.name}.sizes.json"
        if not self.labels_dir.parent.is_dir():
            cache = images_dir.parent / f"{images_dir.name}.sizes.json"
        problems: dict[str, str] = {}
        sizes = image_sizes(paths, cache, problems)
        if problems:
            first = ", ".join(f"{name} {why}" for name, why in list(problems.items())[:3])
            LOGGER.warning(f"WARNING: {len(problems)} images in {images_dir} cannot be used (first: {first}) — skipped")
        paths = [p for p, s in zip(paths, sizes) if s is not None]
        sizes = np.array([s for s in sizes if s is not None], np.int64).reshape(-1, 2)  # (I, 2) h, w

        bad: list[str] = []
        counts = {"unknown_class": 0, "negative": 0}
        image_index, rows, background = [], [], 0
        for i, path in enumerate(paths):
            label_file = self.labels_dir / f"{path.stem}.txt"
            found = _read_labels(label_file, len(names), bad, counts) if label_file.is_file() else np.zeros((0, 5))
            background += not len(found)
            image_index.append(np.full(len(found), i, np.int64))
            rows.append(found)
        for message in bad[:_MAX_REPORTED]:
            LOGGER.warning(f"WARNING: {message} — line skipped")
        if len(bad) > _MAX_REPORTED:
            LOGGER.warning(f"WARNING: {self.labels_dir}: {len(bad) - _MAX_REPORTED} more malformed label lines skipped")
        if counts["unknown_class"]:
            LOGGER.warning(
                f"WARNING: {self.labels_dir}: {counts['unknown_class']} boxes with a class id outside 0..{len(names) - 1} "
                f"— skipped; add the class to 'names:' or fix the labels"
            )
        self.num_malformed, self.num_background = len(bad), background
        image_index = np.concatenate(image_index) if image_index else np.zeros(0, np.int64)
        rows = np.concatenate(rows) if rows else np.zeros((0, 5))
        hw = sizes[image_index].astype(np.float64)  # (M, 2)
        scale = np.stack([hw[:, 1], hw[:, 0]], 1)  # (M, 2) w, h
        centre, size = rows[:, 1:3] * scale, rows[:, 3:5] * scale
        xyxy = np.concatenate([centre - size / 2, centre + size / 2], 1)  # (M, 4)
        notes = [f"{background} background images"] if background else []
        if counts["negative"]:
            notes.append(f"{counts['negative']} boxes of negative or zero size skipped")
        super().__init__(
            source=str(self.labels_dir), images_dir=images_dir, files=[p.name for p in paths], sizes=sizes,
            image_ids=range(1, len(paths) + 1), names=names, transform=transform, box_image=image_index,
            boxes=xyxy, labels=rows[:, 0].astype(np.int64), ignore_image=np.zeros(0, np.int64),
            ignore_boxes=np.zeros((0, 4)), notes=notes,
        )  # fmt: skip
