"""The built-in shapes scenes written as YOLO txt and as CrowdHuman .odgt, next to their COCO files.

`write_extra_format(root, 'yolo' | 'crowdhuman')` reads root/annotations/{train,val}.json (and
for CrowdHuman re-creates each scene from the seed in root/generate.json, without drawing it)
and writes, once, atomically:

    root/labels/{train,val}/<stem>.txt            # YOLO: `cls xc yc w h` normalised, 4 classes
    root/crowdhuman/annotation_{train,val}.odgt   # CrowdHuman: every shape a 'person'

CrowdHuman boxes: vbox = the visible extent (the COCO bbox), fbox = the shape as drawn,
occluded parts included (its nominal, unoccluded extent). Ignore regions, so the ignore path is
exercised on real files: a shape whose visible box is under 12 px on its shorter side is tagged
'mask', one left with less than 52% of its pixels visible gets extra.ignore = 1.
"""

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .crowd import CrowdConfig
from .shapes import ShapesConfig

__all__ = ["write_extra_format", "BUILTIN_CONFIGS"]

BUILTIN_CONFIGS = {"shapes": ShapesConfig, "crowd": CrowdConfig}  # a generate.json's 'builtin' (absent: shapes)
_SPLITS = ("train", "val")


def _config(root: Path) -> ShapesConfig | CrowdConfig:
    settings = json.loads((root / "generate.json").read_text())
    settings.pop("version", None)
    return BUILTIN_CONFIGS[settings.pop("builtin", "shapes")](**settings)


def _write_yolo(root: Path, partial: Path) -> None:
    for split in _SPLITS:
        data = json.loads((root / "annotations" / f"{split}.json").read_text())
        folder = partial / split
        folder.mkdir(parents=True)
        lines: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
        sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        for ann in data["annotations"]:
            w, h = sizes[ann["image_id"]]
            x, y, bw, bh = ann["bbox"]
            lines[ann["image_id"]].append(
                f"{ann['category_id'] - 1} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
            )
        for img in data["images"]:
            (folder / f"{Path(img['file_name']).stem}.txt").write_text("\n".join(lines[img["id"]]) + "\n")


def _scene_record(cfg: ShapesConfig | CrowdConfig, split: str, index: int, image: dict, visible_boxes: np.ndarray) -> dict:
    """The .odgt record of one image; its visible boxes must be the COCO json's (same seed, same scene)."""
    rng = np.random.default_rng([cfg.seed, _SPLITS.index(split), index])
    scene, _, _ = cfg.make_scene(rng)
    full, visible = scene.full_boxes().astype(np.float64), scene.boxes().astype(np.float64)
    if not np.array_equal(visible, visible_boxes):
        raise RuntimeError(f"shapes: scene {split}/{index} does not reproduce its COCO boxes — delete the cached dataset")
    pixels = scene.visible_pixels() / np.maximum(scene._full, 1)  # (N,) visible fraction
    gtboxes = []
    for (fx0, fy0, fx1, fy1), (x0, y0, x1, y1), frac in zip(full.tolist(), visible.tolist(), pixels.tolist()):
        small = min(x1 - x0, y1 - y0) < cfg.mask_below_px
        gtboxes.append({
            "tag": "mask" if small else "person",
            "fbox": [fx0, fy0, fx1 - fx0, fy1 - fy0],
            "vbox": [x0, y0, x1 - x0, y1 - y0],
            "extra": {"ignore": int(small or frac < cfg.ignore_below_visible)},
        })  # fmt: skip
    return {"ID": Path(image["file_name"]).stem, "gtboxes": gtboxes}


def _write_crowdhuman(root: Path, partial: Path) -> None:
    cfg = _config(root)
    partial.mkdir(parents=True)
    for split in _SPLITS:
        data = json.loads((root / "annotations" / f"{split}.json").read_text())
        boxes: dict[int, list] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
        images = sorted(data["images"], key=lambda img: img["id"])  # ids are 1 + index (shapes._write_split)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            records = pool.map(
                lambda img: _scene_record(cfg, split, img["id"] - 1, img, np.array(boxes[img["id"]], np.float64).reshape(-1, 4)),
                images,
            )
            lines = [json.dumps(r) for r in records]
        (partial / f"annotation_{split}.odgt").write_text("\n".join(lines) + "\n")


def write_extra_format(root: str | os.PathLike, format: str) -> Path:
    """Write the generated dataset at `root` as 'yolo' or 'crowdhuman' unless already there; return the folder."""
    root = Path(root)
    target, writer = {"yolo": (root / "labels", _write_yolo), "crowdhuman": (root / "crowdhuman", _write_crowdhuman)}[format]
    if target.is_dir():
        return target
    partial = root / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        writer(root, partial)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process (a DDP rank) wrote it first; keep theirs.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
