"""A COCO-json detection dataset: images + boxes, validated once when it is built.

COCO category ids (sparse, e.g. 1..90 with gaps) map to contiguous labels 0..C-1 in sorted-id
order; `cat_ids[label]` maps back, for results files. Boxes are xyxy pixels of the transformed
image. Shape letters: N = boxes of one image, M = boxes of the whole dataset, I = images.
"""

import contextlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..utils.log import LOGGER

__all__ = ["CocoDetection", "read_image"]

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, float]]


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """uint8 (H, W, 3) BGR, or None if missing or undecodable. EXIF rotation is ignored, as in COCO's sizes."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


class CocoDetection(Dataset):
    """Images of `images_dir` with the boxes of the COCO json `ann_file`.

    `dataset[i] -> (image, target)`: image float32 (3, H, W) from `transform`; target a dict
    with boxes float32 (N, 4) xyxy in the transformed image's pixels, labels int64 (N,),
    image_id int, orig_size (h, w) of the file, scale float (transformed / original), path str.

    Crowd boxes (iscrowd=1) are left out (counted in `num_crowd`). Boxes are clipped to their
    image and dropped when empty after clipping, summarised in one log line. An image file that
    is missing or corrupt is skipped with one warning: the next readable image is returned.
    """

    def __init__(
        self,
        *,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: Transform,
        names: Sequence[str] | None = None,
    ):
        self.images_dir, self.ann_file, self.transform = Path(images_dir), Path(ann_file), transform
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"{self.ann_file}: annotation file not found")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: image folder not found (annotations {self.ann_file})")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(self.ann_file))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{self.ann_file}: not a COCO detection json ({type(e).__name__}: {e})") from e

        self.cat_ids: list[int] = sorted(self.coco.cats)  # contiguous label -> COCO category id
        file_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]
        if names is not None and len(names) != len(self.cat_ids):
            raise ValueError(
                f"{self.ann_file}: {len(self.cat_ids)} categories ({', '.join(file_names)}) but {len(names)} names "
                f"were given — make the data YAML's 'names:' match, or remove it"
            )
        self.names: list[str] = list(names) if names is not None else file_names
        self.ids: list[int] = sorted(self.coco.imgs)  # dataset index -> COCO image id

        self._files: list[str] = []
        self._sizes = np.zeros((len(self.ids), 2), np.int64)  # (I, 2) json (h, w)
        for i, image_id in enumerate(self.ids):
            info = self.coco.imgs[image_id]
            missing = [key for key in ("file_name", "width", "height") if key not in info]
            if missing:
                raise ValueError(f"{self.ann_file}: image id {image_id} has no {', '.join(missing)}")
            self._files.append(info["file_name"])
            self._sizes[i] = (info["height"], info["width"])
        self._index_boxes()
        self._bad: set[int] = set()  # indices found unreadable, in this process
        self._resized: set[int] = set()  # indices whose file size differs from the json, warned once

    def _index_boxes(self) -> None:
        """Pack every kept box into (M, 4) arrays with per-image offsets; clip, drop, count."""
        index_of = {image_id: i for i, image_id in enumerate(self.ids)}
        label_of = {cat: label for label, cat in enumerate(self.cat_ids)}
        image_index, boxes, labels, crowd = [], [], [], 0
        for ann in self.coco.anns.values():
            where = f"{self.ann_file}: annotation {ann.get('id')}"
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            if ann.get("category_id") not in label_of:
                raise ValueError(
                    f"{where} has category_id {ann.get('category_id')}, which is not among the file's "
                    f"categories {self.cat_ids} — fix the annotation or add the category"
                )
            if ann.get("image_id") not in index_of:
                raise ValueError(f"{where} refers to unknown image_id {ann.get('image_id')}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"{where} has bbox {bbox!r}, expected [x, y, w, h]")
            image_index.append(index_of[ann["image_id"]])
            boxes.append(bbox)
            labels.append(label_of[ann["category_id"]])
        image_index = np.array(image_index, np.int64)  # (M,)
        xywh = np.array(boxes, np.float64).reshape(-1, 4)  # (M, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        hw = self._sizes[image_index]  # (M, 2)
        limit = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)  # (M, 4) w, h, w, h
        clipped = np.clip(xyxy, 0, limit)
        keep = np.isfinite(xyxy).all(1) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        changed = keep & np.any(clipped != xyxy, 1)
        self.num_crowd, self.num_clipped, self.num_dropped = crowd, int(changed.sum()), int((~keep).sum())
        if self.num_clipped or self.num_dropped or self.num_crowd:
            LOGGER.info(
                f"{self.ann_file}: {self.num_clipped} boxes clipped to their image, {self.num_dropped} empty or "
                f"outside boxes dropped, {self.num_crowd} crowd boxes skipped (of {len(self.coco.anns)})"
            )
        order = np.argsort(image_index[keep], kind="stable")
        self._boxes = clipped[keep][order].astype(np.float32)  # (M, 4) xyxy, json pixels
        self._labels = np.array(labels, np.int64)[keep][order]  # (M,)
        counts = np.bincount(image_index[keep], minlength=len(self.ids))
        self._offsets = np.concatenate([[0], np.cumsum(counts)])  # image i owns rows offsets[i]:offsets[i+1]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._files[index]

    def _read(self, index: int) -> np.ndarray | None:
        """The image at `index`, or None after warning once that it cannot be read."""
        if index in self._bad:
            return None
        path = self.image_path(index)
        image = read_image(path)
        if image is None:
            self._bad.add(index)
            reason = "cannot be decoded (corrupt?)" if path.is_file() else "is missing"
            LOGGER.warning(f"WARNING: image {path} {reason} — skipped, using the next image instead")
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        for step in range(len(self)):
            i = (index + step) % len(self)
            image = self._read(i)
            if image is not None:
                break
        else:
            raise RuntimeError(f"{self.images_dir}: none of the {len(self)} images of {self.ann_file} can be read")
        boxes = self._boxes[self._offsets[i] : self._offsets[i + 1]].copy()  # (N, 4)
        labels = self._labels[self._offsets[i] : self._offsets[i + 1]]  # (N,)
        h, w = image.shape[:2]
        json_h, json_w = self._sizes[i]
        if (h, w) != (json_h, json_w):
            if i not in self._resized:
                self._resized.add(i)
                LOGGER.warning(
                    f"WARNING: {self.image_path(i)} is {w}x{h} but {self.ann_file} says {json_w}x{json_h}, boxes rescaled"
                )
            boxes *= np.array([w / json_w, h / json_h, w / json_w, h / json_h], np.float32)
        tensor, boxes, scale = self.transform(image, boxes)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": int(self.ids[i]),
            "orig_size": (int(h), int(w)),
            "scale": float(scale),
            "path": str(self.image_path(i)),
        }
        return tensor, target
