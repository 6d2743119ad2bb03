"""What every dataset reader shares: packed boxes and ignore regions, image reading, the sample dict.

A reader (COCO json, CrowdHuman .odgt, YOLO txt) parses its files once into arrays and hands
them to `DetectionDataset.__init__`; from there on the three behave alike. Boxes are xyxy in
the pixels of the annotation's image size (`sizes`), clipped to it; boxes that are empty or
outside after clipping are dropped and counted. Shape letters: I = images, M = boxes of the
whole dataset, N = boxes of one image, K = ignore regions of the whole dataset.
"""

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.log import LOGGER
from .image_io import Header, apply_orientation, image_problem, load_image, max_pixels, read_header, read_image

__all__ = ["DetectionDataset", "read_image", "image_sizes", "IMAGE_SUFFIXES", "check_annotated_folder", "xywh_to_xyxy"]

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, float]]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_sizes(paths: Sequence[Path], cache_file: Path, problems: dict | None = None) -> list[tuple[int, int] | None]:
    """(h, w) of each image in its displayed frame (EXIF rotation applied), or None if it must be
    skipped (missing, not a regular file, truncated, over max_pixels, unreadable; the reason goes
    to `problems[path.name]` when given). Read from headers once and cached.

    The cache is a json {file name: [h, w, mtime_ns, orientation]} at `cache_file` (h, w of the
    stored pixels); entries whose file changed are read again. A cache that cannot be written
    is only kept in memory.
    """
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    out, changed = [], False
    for path in paths:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = None
        entry = cache.get(path.name)
        if isinstance(entry, list) and len(entry) == 4 and entry[2] == mtime:
            header = Header(entry[0], entry[1], entry[3])
            problem = image_problem(path, header) if header.height * header.width > max_pixels() else None
        else:
            header = read_header(path) if path.is_file() else None
            problem = image_problem(path, header) or (None if header else "cannot be read as an image")
            if problem is None:
                cache[path.name], changed = [header.height, header.width, mtime, header.orientation], True
        if problem is not None:
            if problems is not None:
                problems[path.name] = problem
            out.append(None)
            continue
        out.append(header.size(exif=True))
    if changed:
        try:
            partial = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            partial.write_text(json.dumps(cache))
            partial.replace(cache_file)
        except OSError as e:
            LOGGER.warning(f"WARNING: could not cache image sizes in {cache_file} ({e}); they are read again next time")
    return out


def check_annotated_folder(images_dir: Path, ann_file: Path) -> None:
    """An annotation file and its image folder, each checked to exist (FileNotFoundError naming it)."""
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file}: annotation file not found")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: image folder not found (annotations {ann_file})")


def xywh_to_xyxy(xywh) -> np.ndarray:
    """Boxes as top-left x, y, width, height (a list of 4-lists or an (N, 4) array) -> (N, 4) float64 xyxy."""
    a = np.asarray(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], 1)


def _pack(image_index: np.ndarray, num_images: int):
    """Sort rows by image: -> order (M,), offsets (I+1,) where image i owns rows offsets[i]:offsets[i+1]."""
    order = np.argsort(image_index, kind="stable")
    counts = np.bincount(image_index, minlength=num_images)
    return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class DetectionDataset(Dataset):
    """Images with boxes, labels and ignore regions, read by a format-specific subclass.

    `dataset[i] -> (image, target)`: image float32 (3, H, W) from `transform`; target a dict
    with boxes float32 (N, 4) xyxy in the transformed image's pixels, labels int64 (N,),
    ignore_boxes float32 (K_i, 4) in the same pixels (transformed exactly like the boxes),
    image_id int, orig_size (h, w) of the file, scale float (transformed / original), path str.
    An image file that cannot be read at run time is skipped with one warning: the next
    readable image is returned.
    """

    format = "?"
    exif = True  # read images in their EXIF-rotated frame (the COCO reader: stored pixels, see image_io)

    def __init__(
        self,
        *,
        source: str,
        images_dir: Path,
        files: Sequence[str],
        sizes: np.ndarray,
        image_ids: Sequence[int],
        names: Sequence[str],
        transform: Transform,
        box_image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore_image: np.ndarray,
        ignore_boxes: np.ndarray,
        notes: Sequence[str] = (),
    ):
        """Arrays: sizes (I, 2) (h, w); box_image (M,), boxes (M, 4) xyxy, labels (M,);
        ignore_image (K,), ignore_boxes (K, 4). `notes` are counts the reader adds to the one summary line."""
        self.source, self.images_dir, self.transform = source, Path(images_dir), transform
        self._files, self._sizes = list(files), np.asarray(sizes, np.int64).reshape(-1, 2)
        self.ids: list[int] = [int(i) for i in image_ids]
        self.names: list[str] = list(names)
        if not self.ids:
            raise ValueError(f"{source}: no valid image left — fix the warnings above or check the image folder {images_dir}")
        self._index_of = {image_id: i for i, image_id in enumerate(self.ids)}
        boxes, keep_b, clipped_b = self._clip(np.asarray(box_image, np.int64), boxes)
        ignores, keep_i, _ = self._clip(np.asarray(ignore_image, np.int64), ignore_boxes)
        box_image, labels = np.asarray(box_image, np.int64)[keep_b], np.asarray(labels, np.int64)[keep_b]
        ignore_image = np.asarray(ignore_image, np.int64)[keep_i]
        order, self._offsets = _pack(box_image, len(self.ids))
        self._boxes, self._labels = boxes[order].astype(np.float32), labels[order]  # (M, 4), (M,)
        order, self._ignore_offsets = _pack(ignore_image, len(self.ids))
        self._ignores = ignores[order].astype(np.float32)  # (K, 4)
        self.num_clipped, self.num_dropped = clipped_b, int((~keep_b).sum())
        parts = [*notes]
        if self.num_clipped:
            parts.append(f"{self.num_clipped} boxes clipped to their image")
        if self.num_dropped:
            parts.append(f"{self.num_dropped} empty or outside boxes dropped")
        if parts:
            LOGGER.info(f"{source}: {', '.join(parts)} ({len(self._boxes)} boxes, {len(self._ignores)} ignore regions kept)")
        self._bad: set[int] = set()  # indices found unreadable, in this process
        self._resized: set[int] = set()  # indices whose file size differs from the annotation, warned once
        self._reframed: set[int] = set()  # indices whose EXIF frame differs from the annotation's, warned once
        self._coco = None  # coco_gt(), built on first use

    def _clip(self, image_index: np.ndarray, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Clip (M, 4) xyxy to each row's image -> (kept boxes, keep mask (M,), number changed)."""
        xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
        hw = self._sizes[image_index]  # (M, 2)
        limit = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)  # (M, 4) w, h, w, h
        clipped = np.clip(xyxy, 0, limit)
        keep = np.isfinite(xyxy).all(1) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        return clipped[keep], keep, int((keep & np.any(clipped != xyxy, 1)).sum())

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._files[index]

    def image_size(self, image_id: int) -> tuple[int, int]:
        """(h, w) of the annotation's image `image_id` (the frame its boxes are in)."""
        h, w = self._sizes[self._index_of[image_id]]
        return int(h), int(w)

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) xyxy, labels (N,), ignore boxes (K_i, 4) of image `index`, in annotation pixels."""
        a, b = self._offsets[index], self._offsets[index + 1]
        c, d = self._ignore_offsets[index], self._ignore_offsets[index + 1]
        return self._boxes[a:b], self._labels[a:b], self._ignores[c:d]

    def _read(self, index: int) -> np.ndarray | None:
        """The image at `index` in the annotation's frame, or None after warning once that it cannot be read."""
        if index in self._bad:
            return None
        path = self.image_path(index)
        image, problem, header = load_image(path, exif=self.exif)
        if image is None:
            self._bad.add(index)
            LOGGER.warning(f"WARNING: image {path} {problem} — skipped, using the next image instead")
            return None
        ann = tuple(int(v) for v in self._sizes[index])
        if image.shape[:2] != ann and header is not None and header.size(not self.exif) == ann:
            # The annotation gives the size of the other frame (EXIF rotated or not): its boxes are in that one.
            if index not in self._reframed:
                self._reframed.add(index)
                frame = "stored (unrotated)" if self.exif else "EXIF-rotated"
                LOGGER.warning(
                    f"WARNING: {path} has EXIF orientation {header.orientation} but {self.source} gives the size of its "
                    f"{frame} pixels ({ann[1]}x{ann[0]}) — read in that frame"
                )
            image = apply_orientation(image, header.orientation, inverse=self.exif)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        for step in range(len(self)):
            i = (index + step) % len(self)
            image = self._read(i)
            if image is not None:
                break
        else:
            raise RuntimeError(f"{self.images_dir}: none of the {len(self)} images of {self.source} can be read")
        boxes, labels, ignores = self.annotations(i)
        both = np.concatenate([boxes, ignores])  # (N + K_i, 4): ignore regions go through the same steps
        h, w = image.shape[:2]
        ann_h, ann_w = self._sizes[i]
        if (h, w) != (ann_h, ann_w):
            if i not in self._resized:
                self._resized.add(i)
                LOGGER.warning(
                    f"WARNING: {self.image_path(i)} is {w}x{h} but {self.source} says {ann_w}x{ann_h}, boxes rescaled"
                )
            both = both * np.array([w / ann_w, h / ann_h, w / ann_w, h / ann_h], np.float32)
        tensor, both, scale = self.transform(image, both)
        # Transforms map boxes row by row (resize, flip, clip) and never drop one.
        assert len(both) == len(boxes) + len(ignores), "a transform changed the number of boxes"
        both = torch.from_numpy(np.ascontiguousarray(both, np.float32)).reshape(-1, 4)
        target = {
            "boxes": both[: len(boxes)],
            "labels": torch.from_numpy(labels.copy()),
            "ignore_boxes": both[len(boxes) :],
            "image_id": int(self.ids[i]),
            "orig_size": (int(h), int(w)),
            "scale": float(scale),
            "path": str(self.image_path(i)),
        }
        return tensor, target

    def coco_gt(self):
        """The annotations as an in-memory pycocotools COCO (category id = label + 1, ignore regions iscrowd=1), built once."""
        if self._coco is None:
            self._coco = self._build_coco()
        return self._coco

    def _build_coco(self):
        import contextlib
        import io

        from pycocotools.coco import COCO

        images = [{"id": image_id, "width": int(w), "height": int(h), "file_name": f}
                  for image_id, (h, w), f in zip(self.ids, self._sizes.tolist(), self._files)]  # fmt: skip
        anns = []
        for i, image_id in enumerate(self.ids):
            boxes, labels, ignores = self.annotations(i)
            for rows, crowd in ((zip(boxes.tolist(), labels.tolist()), 0), (((b, 0) for b in ignores.tolist()), 1)):
                for (x0, y0, x1, y1), label in rows:
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": crowd,
                                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})  # fmt: skip
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(self.names)]}  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
