"""A COCO-json detection dataset: images + boxes + crowd regions, validated once when it is built.

COCO category ids (sparse, e.g. 1..90 with gaps) map to contiguous labels 0..C-1 in sorted-id
order; `cat_ids[label]` maps back, for results files. `iscrowd` boxes become ignore regions
(`target["ignore_boxes"]`). Shape letters: M = annotations of the whole dataset.
"""

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from ..utils.log import LOGGER
from .base import DetectionDataset, Transform, check_annotated_folder, read_image, xywh_to_xyxy
from .coco_json import read_coco_json

__all__ = ["CocoDetection", "read_image"]


class CocoDetection(DetectionDataset):
    """Images of `images_dir` with the boxes of the COCO json `ann_file` (see `DetectionDataset`).

    The json is checked and cleaned first (coco_json.read_coco_json: repeated ids, unknown
    category or image ids, malformed boxes, missing area/iscrowd); images whose file is missing
    are left out with one warning; the dataset fails only if no image remains. `coco` is the
    pycocotools index of the cleaned file, which validation scores against.
    """

    format = "coco"
    exif = False  # COCO's width/height are of the stored pixels

    def __init__(
        self,
        *,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: Transform,
        names: Sequence[str] | None = None,
    ):
        images_dir, self.ann_file = Path(images_dir), Path(ann_file)
        check_annotated_folder(images_dir, self.ann_file)
        self.coco = COCO()  # indexed from the checked, cleaned records (coco_json): training and COCOeval share them
        self.coco.dataset, notes = read_coco_json(self.ann_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self.cat_ids: list[int] = sorted(self.coco.cats)  # contiguous label -> COCO category id
        file_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]
        if names is not None and len(names) != len(self.cat_ids):
            raise ValueError(
                f"{self.ann_file}: {len(self.cat_ids)} categories ({', '.join(file_names)}) but {len(names)} names "
                f"were given — make the data YAML's 'names:' match, or remove it"
            )
        files, sizes, ids = self._present_images(images_dir)
        boxes, crowd = self._boxes(ids)  # iscrowd 0 and 1: (image index, xywh, label) each
        self.num_crowd = len(crowd[0])
        super().__init__(
            source=str(self.ann_file), images_dir=images_dir, files=files, sizes=np.array(sizes).reshape(-1, 2),
            image_ids=ids, names=list(names) if names is not None else file_names, transform=transform,
            box_image=np.array(boxes[0], np.int64), boxes=xywh_to_xyxy(boxes[1]), labels=np.array(boxes[2], np.int64),
            ignore_image=np.array(crowd[0], np.int64), ignore_boxes=xywh_to_xyxy(crowd[1]),
            notes=notes + ([f"{self.num_crowd} crowd boxes kept as ignore regions"] if self.num_crowd else []),
        )  # fmt: skip

    def _present_images(self, images_dir: Path) -> tuple[list[str], list[tuple[int, int]], list[int]]:
        """(file names, (h, w) sizes, image ids) of the listed images whose file exists, by image id;
        one warning for the missing ones (their count in num_missing)."""
        files, sizes, ids, missing = [], [], [], []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            if not (images_dir / info["file_name"]).is_file():
                missing.append(info["file_name"])
                continue
            files.append(info["file_name"])
            sizes.append((info["height"], info["width"]))
            ids.append(image_id)
        if missing:
            LOGGER.warning(
                f"WARNING: {len(missing)} of {len(self.coco.imgs)} images listed in {self.ann_file} are missing from "
                f"{images_dir} (first: {', '.join(missing[:3])}) — skipped"
            )
        self.num_missing = len(missing)
        return files, sizes, ids

    def _boxes(self, ids: list[int]) -> tuple[tuple[list, list, list], tuple[list, list, list]]:
        """The annotations of the images `ids`, as (image index, xywh, label) lists: boxes, then crowd regions."""
        index_of = {image_id: i for i, image_id in enumerate(ids)}
        label_of = {cat: label for label, cat in enumerate(self.cat_ids)}
        rows = {0: ([], [], []), 1: ([], [], [])}  # iscrowd -> (image index, xywh, label)
        for ann in self.coco.anns.values():  # every one well-formed (read_coco_json)
            if ann["image_id"] not in index_of:
                continue  # its image file is missing
            image_index, xywh, labels = rows[ann["iscrowd"]]
            image_index.append(index_of[ann["image_id"]])
            xywh.append(ann["bbox"])
            labels.append(label_of[ann["category_id"]])
        return rows[0], rows[1]

    def coco_gt(self) -> COCO:
        """The annotation file's own pycocotools index."""
        return self.coco
