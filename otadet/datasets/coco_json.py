"""Reading a COCO json once, checking it and cleaning it, before pycocotools indexes it.

pycocotools keys images and annotations by id, so a repeated id silently drops or moves
annotations (ids restarting at 1 per image keep one box per id), and COCOeval dies on the
first annotation without `area` or `iscrowd` or with an unknown `category_id`. Both the
training reader and the evaluation use the records cleaned here:
- duplicate or missing image ids, non-integer ids, images without file_name/width/height: error;
- duplicate or missing annotation ids: fresh ids, with a warning;
- annotations with an unknown image_id or category_id, or a bbox that is not 4 finite numbers,
  or an iscrowd that is not 0/1: skipped, counted in one warning;
- a missing or non-numeric `area`: bbox w*h; a missing `iscrowd`: 0 (COCO's defaults), counted.
"""

import json
import math
import os
from collections import Counter
from pathlib import Path

from ..utils.log import LOGGER

__all__ = ["read_coco_json", "category_names"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _duplicates(ids: list) -> list:
    return sorted((i for i, n in Counter(ids).items() if n > 1), key=str)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 json ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO json is an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _check_images(path: Path, images: list) -> None:
    for k, image in enumerate(images):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            got = image.get("id") if isinstance(image, dict) else image
            raise ValueError(f"{path}: images[{k}] has id {got!r}; COCO image ids are integers — renumber them")
        absent = [key for key in ("file_name", "width", "height") if key not in image]
        if absent:
            raise ValueError(f"{path}: image id {image['id']} has no {', '.join(absent)} — fix the 'images' entry")
        if not isinstance(image["file_name"], str) or not all(_is_int(image[k]) and image[k] > 0 for k in ("width", "height")):
            raise ValueError(
                f"{path}: image id {image['id']}: file_name must be a string and width/height positive integers, got "
                f"{image['file_name']!r}, {image['width']!r}, {image['height']!r}"
            )
    repeated = _duplicates([image["id"] for image in images])
    if repeated:
        raise ValueError(
            f"{path}: image ids {repeated[:5]} appear more than once; pycocotools would move one image's boxes onto "
            "another — give every image its own id"
        )


def _check_categories(path: Path, categories: list) -> None:
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise ValueError(f"{path}: categories[{k}] has no integer 'id'")
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            raise ValueError(f"{path}: category id {cat['id']} has name {cat.get('name')!r}; each category needs a string 'name'")
    repeated = _duplicates([cat["id"] for cat in categories])
    if repeated:
        raise ValueError(f"{path}: category ids {repeated[:5]} appear more than once — give every category its own id")


def _clean_annotation(ann, image_ids: set, cat_ids: set) -> tuple[dict | None, list[str]]:
    """(the annotation with COCO's defaults filled, the keys filled) or (None, [why it is skipped])."""
    if not isinstance(ann, dict):
        return None, ["not an object"]
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in image_ids:
        return None, ["unknown image_id"]
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
        return None, ["unknown category_id"]
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None, ["bbox not 4 finite numbers"]
    crowd = ann.get("iscrowd", 0)
    if not (crowd in (0, 1) and type(crowd) in (int, bool)):
        return None, ["iscrowd not 0 or 1"]
    out = {**ann, "iscrowd": int(crowd)}
    filled = [] if "iscrowd" in ann else ["iscrowd"]
    if not _is_number(ann.get("area")):
        out["area"] = float(bbox[2] * bbox[3])
        filled.append("area")
    return out, filled


def category_names(path: str | os.PathLike) -> list[str]:
    """The category names of a COCO json in id order (the contiguous labels 0..C-1), checked."""
    path = Path(path)
    categories = _load(path).get("categories", [])
    _check_categories(path, categories)
    if not categories:
        raise ValueError(f"{path}: no 'categories' — list the classes there, or give 'names:' in the data YAML")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def read_coco_json(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """The COCO json at `path`, checked and cleaned as the module docstring says, ready for
    `COCO().dataset`, and notes on the defaults filled in (for the reader's summary line).
    Raises ValueError naming the file and the fix."""
    path = Path(path)
    data = _load(path)
    images, categories = data.get("images", []), data.get("categories", [])
    _check_images(path, images)
    _check_categories(path, categories)
    image_ids, cat_ids = {image["id"] for image in images}, {cat["id"] for cat in categories}
    kept, skipped, filled, unknown_cats = [], Counter(), Counter(), set()
    for ann in data.get("annotations", []):
        clean, notes = _clean_annotation(ann, image_ids, cat_ids)
        if clean is None:
            skipped[notes[0]] += 1
            if notes[0] == "unknown category_id":
                unknown_cats.add(repr(ann.get("category_id")))
        else:
            kept.append(clean)
            filled.update(notes)
    ids = [ann.get("id") for ann in kept]
    valid = [i for i in ids if _is_int(i)]
    if len(set(valid)) != len(ids):  # repeated, missing or non-integer ids: number them all afresh
        LOGGER.warning(
            f"WARNING: {path}: {len(ids) - len(set(valid))} annotations share an id or have none "
            f"(e.g. {_duplicates(valid)[:3]}); all annotations renumbered 1..{len(kept)} so none is lost"
        )
        kept = [{**ann, "id": k} for k, ann in enumerate(kept, start=1)]
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
        LOGGER.warning(
            f"WARNING: {path}: {sum(skipped.values())} annotations skipped ({reasons}; categories {sorted(cat_ids)}"
            + (f", unknown e.g. {', '.join(sorted(unknown_cats)[:5])}" if unknown_cats else "") + ") — "
            "fix the ids or boxes; training and evaluation both leave them out"
        )
    notes = [f"{filled[key]} without {key} given {default}" for key, default in (("area", "w*h"), ("iscrowd", "0")) if filled[key]]
    return {**data, "images": images, "categories": categories, "annotations": kept}, notes
