"""The CrowdHuman reader: `annotation_{train,val}.odgt` (one JSON record per line) + `Images/<ID>.jpg`.

A record is {"ID": str, "gtboxes": [{"tag": "person"|"mask", "fbox"|"vbox"|"hbox": [x, y, w, h],
"extra": {"ignore": 0|1, ...}, ...}]}. `box` picks the full-body box 'fbox' (the paper's target)
or the visible box 'vbox'. A box tagged 'mask' (or any tag other than 'person') or with
extra.ignore == 1 is an ignore region, everything else is a 'person' (label 0). The .odgt has
no image sizes: they are read from the image headers once and cached next to the annotation
file (`<annotation>.sizes.json`).

Bad input is skipped, never fatal while an image remains: malformed lines (reported as
file:line), boxes of negative or zero size (counted), images that are missing (one summary).
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.log import LOGGER
from .base import DetectionDataset, Transform, check_annotated_folder, image_sizes, xywh_to_xyxy

__all__ = ["CrowdHumanDetection", "read_odgt", "BOX_KEYS"]

BOX_KEYS = ("fbox", "vbox")
_MAX_REPORTED = 10  # malformed lines named one by one before the rest are only counted


def _is_box(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def _check_record(record, box: str) -> str | None:
    """Why `record` is malformed, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a JSON object"
    if not isinstance(record.get("ID"), str) or not record["ID"]:
        return "no string 'ID'"
    if not isinstance(record.get("gtboxes"), list):
        return "no 'gtboxes' list"
    for k, entry in enumerate(record["gtboxes"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("tag"), str):
            return f"gtboxes[{k}] has no string 'tag'"
        if not _is_box(entry.get(box)):
            return f"gtboxes[{k}] '{box}' is {entry.get(box)!r}, not [x, y, w, h]"
        if "extra" in entry and not isinstance(entry["extra"], dict):
            return f"gtboxes[{k}] 'extra' is not an object"
    return None


def read_odgt(path: str | os.PathLike, box: str = "fbox") -> list[dict]:
    """The well-formed records of an .odgt file, in file order; malformed lines warned (file:line) and skipped."""
    path = Path(path)
    records, bad, seen = [], [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"{path}:{number}: not JSON ({e.msg})")
                continue
            why = _check_record(record, box)
            if why is None and record["ID"] in seen:
                why = f"ID {record['ID']!r} repeats an earlier line"
            if why is not None:
                bad.append(f"{path}:{number}: {why}")
                continue
            seen.add(record["ID"])
            records.append(record)
    for message in bad[:_MAX_REPORTED]:
        LOGGER.warning(f"WARNING: {message} — line skipped")
    if len(bad) > _MAX_REPORTED:
        LOGGER.warning(f"WARNING: {path}: {len(bad) - _MAX_REPORTED} more malformed lines skipped")
    return records


def is_ignore(entry: dict) -> bool:
    """A gt entry the benchmark ignores: tag other than 'person' ('mask') or extra.ignore set."""
    return entry["tag"] != "person" or bool((entry.get("extra") or {}).get("ignore", 0))


class CrowdHumanDetection(DetectionDataset):
    """`images_dir/<ID>.jpg` with the boxes of the .odgt `ann_file` (see `DetectionDataset`).

    `records` are the parsed lines of the images kept (the evaluation's ground truth);
    image ids are 1..I in file order and `odgt_ids[i]` is the CrowdHuman ID of index i.
    """

    format = "crowdhuman"

    def __init__(
        self,
        *,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: Transform,
        names: Sequence[str] | None = None,
        box: str = "fbox",
    ):
        images_dir, self.ann_file = Path(images_dir), Path(ann_file)
        if box not in BOX_KEYS:
            raise ValueError(f"CrowdHuman box '{box}' is not one of {', '.join(BOX_KEYS)} — set 'box:' in the data YAML")
        if names is not None and len(names) != 1:
            raise ValueError(
                f"{self.ann_file}: CrowdHuman has one class (person) but {len(names)} names were given — use names: [person]"
            )
        check_annotated_folder(images_dir, self.ann_file)
        self.box = box
        records = read_odgt(self.ann_file, box)
        paths = [images_dir / f"{r['ID']}.jpg" for r in records]
        problems: dict[str, str] = {}
        sizes = image_sizes(paths, self.ann_file.with_name(self.ann_file.name + ".sizes.json"), problems)
        if problems:
            first = ", ".join(f"{name} {why}" for name, why in list(problems.items())[:3])
            LOGGER.warning(
                f"WARNING: {len(problems)} of {len(records)} images listed in {self.ann_file} cannot be used "
                f"in {images_dir} (first: {first}) — skipped"
            )
        kept = [k for k, s in enumerate(sizes) if s is not None]
        self.records: list[dict] = [records[k] for k in kept]
        self.odgt_ids: list[str] = [r["ID"] for r in self.records]

        box_image, xywh, ignore_image, ignore_xywh = [], [], [], []
        for i, record in enumerate(self.records):
            for entry in record["gtboxes"]:
                if is_ignore(entry):
                    ignore_image.append(i)
                    ignore_xywh.append(entry[box])
                else:
                    box_image.append(i)
                    xywh.append(entry[box])
        xywh, ignore_xywh = np.array(xywh, np.float64).reshape(-1, 4), np.array(ignore_xywh, np.float64).reshape(-1, 4)
        negative = int(((xywh[:, 2:] <= 0).any(1)).sum() + ((ignore_xywh[:, 2:] <= 0).any(1)).sum())

        super().__init__(
            source=str(self.ann_file), images_dir=images_dir, files=[paths[k].name for k in kept],
            sizes=np.array([sizes[k] for k in kept]).reshape(-1, 2), image_ids=range(1, len(kept) + 1),
            names=list(names) if names is not None else ["person"], transform=transform,
            box_image=np.array(box_image, np.int64), boxes=xywh_to_xyxy(xywh), labels=np.zeros(len(box_image), np.int64),
            ignore_image=np.array(ignore_image, np.int64), ignore_boxes=xywh_to_xyxy(ignore_xywh),
            notes=[f"{negative} boxes of negative or zero size"] if negative else [],
        )  # fmt: skip

    def gt_records(self, image_ids: Sequence[int] | None = None) -> list[dict]:
        """The .odgt records (with 'height', 'width' added) of `image_ids` (default all), for the metric."""
        indices = range(len(self)) if image_ids is None else [self._index_of[i] for i in image_ids]
        return [
            {**self.records[i], "height": int(self._sizes[i, 0]), "width": int(self._sizes[i, 1])} for i in indices
        ]
