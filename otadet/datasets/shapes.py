"""The built-in synthetic detection dataset: crowded, occluded filled shapes on textured backgrounds.

`generate_shapes(root)` writes a COCO-format dataset, deterministically from a seed:

    root/images/{train,val}/000000.jpg ...
    root/annotations/{train,val}.json     # COCO: images, annotations (bbox = VISIBLE extent), categories
    root/generate.json                    # the generator settings, to detect a stale cache

and, on request (`shapes_formats.write_extra_format`, on first use of data/shapes-yolo.yaml or
data/shapes-crowdhuman.yaml), the same scenes in the two other formats, next to those files:

    root/labels/{train,val}/000000.txt                  # YOLO: cls xc yc w h, normalised
    root/crowdhuman/annotation_{train,val}.odgt         # CrowdHuman: one class, fbox + vbox, ignores

Each image holds 8-24 objects of 4 classes with sizes log-uniform from 8 px to half the shorter
image side. Objects are painted in order onto an instance-id map, so later objects occlude
earlier ones and each box is the bounding box of the pixels still visible at the end. A new
object that would leave an earlier one with less than `min_visible` of its pixels is re-sampled
(bounded tries), so every annotated object stays recognisable. About 60% of the objects are
placed next to an existing one at a similar size, which makes the scene crowded (many box
pairs with IoU > 0.3), the case OTA's global assignment is about.

Shape letters: N = objects, V = polygon vertices.
"""

import dataclasses
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

__all__ = [
    "SHAPES_CLASSES",
    "ShapesConfig",
    "Scene",
    "generate_shapes",
    "generate_builtin",
    "render_image",
    "generator_settings",
]

SHAPES_CLASSES = ("circle", "rectangle", "triangle", "cross")
_VERSION = 4  # bump when the drawing changes; data/shapes.yaml names its cache folder after it
_SHIFT = 4  # cv2.fillPoly fractional bits: polygon vertices at 1/16 px


@dataclass(frozen=True)
class ShapesConfig:
    """Generator settings; `generate:` in data/shapes.yaml may set any of these."""

    seed: int = 0
    num_train: int = 800
    num_val: int = 200
    width: tuple[int, int] = (224, 320)  # image width range, multiples of 8
    height: tuple[int, int] = (192, 288)  # image height range, multiples of 8
    objects: tuple[int, int] = (8, 24)  # objects drawn per image (inclusive range)
    min_size: float = 16.0  # smallest nominal object size, px (occluded visible extents go down to ~8)
    max_size_frac: float = 0.5  # largest nominal object size, fraction of the shorter image side
    min_visible: float = 0.5  # every earlier object keeps at least this fraction of its pixels
    near_prob: float = 0.6  # chance a new object is placed next to an existing one (crowding)
    max_tries: int = 30  # placement attempts per object before giving it up
    jpeg_quality: int = 95

    classes: ClassVar[tuple[str, ...]] = SHAPES_CLASSES
    builtin: ClassVar[str] = "shapes"
    supercategory: ClassVar[str] = "shape"
    version: ClassVar[int] = _VERSION
    mask_below_px: ClassVar[int] = 12  # .odgt: visible shorter side below this -> tag 'mask' (~3%)
    ignore_below_visible: ClassVar[float] = 0.52  # .odgt: visible fraction below this -> extra.ignore = 1 (~5%)

    def __post_init__(self):
        check_generator_ranges(self, ("width", "height", "objects"))
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("shapes generator: 'num_train' and 'num_val' must be >= 0")

    def make_scene(self, rng: np.random.Generator):
        return _make_scene(rng, self)


def check_generator_ranges(cfg, int_ranges: tuple[str, ...]) -> None:
    """Validate a generator config's [low, high] integer ranges (stored as tuples) and min_visible."""
    for name in int_ranges:
        lo_hi = tuple(int(v) for v in getattr(cfg, name))  # YAML gives lists
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] <= 0:
            raise ValueError(f"{cfg.builtin} generator: '{name}' must be [low, high] with 0 < low <= high, got {lo_hi}")
        object.__setattr__(cfg, name, lo_hi)  # frozen dataclass
    if not 0.0 < cfg.min_visible <= 1.0:
        raise ValueError(f"{cfg.builtin} generator: 'min_visible' must be in (0, 1], got {cfg.min_visible}")


# ----------------------------------------------------------------------------- occlusion scene


class Scene:
    """Polygons painted in order onto an instance-id map; later ones occlude earlier ones.

    `try_add` refuses an object that would leave any earlier object with less than
    `min_visible` of its own pixels, so every object keeps at least one visible pixel.
    """

    def __init__(self, *, height: int, width: int, min_visible: float = 0.4):
        assert 0.0 < min_visible <= 1.0, min_visible
        self.height, self.width, self.min_visible = height, width, min_visible
        self.id_map = np.zeros((height, width), np.int16)  # (H, W) 0 = background, k+1 = object k
        self.labels: list[int] = []
        self.masks: list[tuple[int, int, np.ndarray]] = []  # (y0, x0, bool crop) as drawn
        self._full = np.zeros(0, np.int64)  # (N,) pixels of each object when drawn
        self._visible = np.zeros(0, np.int64)  # (N,) pixels still on top

    def __len__(self) -> int:
        return len(self.labels)

    def try_add(self, polygon: np.ndarray, label: int) -> np.ndarray | None:
        """Paint `polygon` (V, 2) float (x, y) pixel centres on top, unless that hides too much.

        Returns the indices of earlier objects it covers partly (possibly empty), or None when
        it was refused (it covers no pixel, or leaves an earlier object under `min_visible`).
        """
        x0, y0 = np.floor(polygon.min(0)).astype(int)
        x1, y1 = np.ceil(polygon.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, self.height)
        if x1 <= x0 or y1 <= y0:
            return None
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        points = np.round((polygon - (x0, y0)) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        mask = mask.astype(bool)
        area = int(mask.sum())
        if area == 0:
            return None
        window = self.id_map[y0:y1, x0:x1]
        n = len(self.labels)
        hidden = np.bincount(window[mask], minlength=n + 1)[1:]  # (N,) pixels this would cover
        visible = self._visible - hidden
        if np.any(visible < self.min_visible * self._full):
            return None
        window[mask] = n + 1
        self._visible = np.append(visible, area)
        self._full = np.append(self._full, area)
        self.labels.append(int(label))
        self.masks.append((y0, x0, mask))
        return np.flatnonzero(hidden)

    def visible_pixels(self) -> np.ndarray:
        """(N,) int64 pixels of each object still on top."""
        return self._visible.copy()

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy pixel-edge boxes of each object's visible pixels."""
        out = np.zeros((len(self), 4), np.float32)
        for k, (y0, x0, mask) in enumerate(self.masks):
            h, w = mask.shape
            on_top = self.id_map[y0 : y0 + h, x0 : x0 + w] == k + 1  # inside its own drawn crop
            rows, cols = np.flatnonzero(on_top.any(1)), np.flatnonzero(on_top.any(0))
            out[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
        return out


    def full_boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy pixel-edge boxes of each object as drawn, occluded parts included."""
        out = np.zeros((len(self), 4), np.float32)
        for k, (y0, x0, mask) in enumerate(self.masks):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            out[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
        return out


def render_image(scene: Scene, background: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Fill each object's visible pixels with its colour: background (H, W, 3) float32, colors (N, 3)."""
    palette = np.concatenate([np.zeros((1, 3), np.float32), colors.astype(np.float32)])  # (N+1, 3)
    image = background.copy()
    on = scene.id_map > 0
    image[on] = palette[scene.id_map[on]]
    return image


# ----------------------------------------------------------------------------- random content


def _polygon(rng: np.random.Generator, label: int, size: float) -> np.ndarray:
    """A random shape of class `label` centred near 0, randomly rotated, whose box's longer side is `size`: (V, 2)."""
    kind = SHAPES_CLASSES[label]
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == "rectangle":
        aspect = np.exp(rng.uniform(np.log(0.45), np.log(2.2)))  # width / height
        w, h = np.sqrt(aspect), 1 / np.sqrt(aspect)
        points = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind == "triangle":
        t = np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.2, 0.2, 3)  # jittered equilateral
        points = np.stack([np.cos(t), np.sin(t)], 1) * rng.uniform(0.9, 1.1, (3, 1))
    else:  # cross: a plus sign with arms of random thickness
        t = rng.uniform(0.28, 0.4)
        points = np.array(
            [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]]
        )
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = points @ rotation.T
    return points * (size / (points.max(0) - points.min(0)).max())  # box's longer side = size


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour gradient + low-frequency blobs: (H, W, 3) float32 BGR, before pixel noise."""
    base = rng.uniform(60, 196, 3).astype(np.float32)
    slope_x, slope_y = rng.uniform(-70, 70, (2, 3)).astype(np.float32)
    yy = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    xx = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    coarse = rng.normal(0, rng.uniform(8, 28), (height // 48 + 2, width // 48 + 2, 3)).astype(np.float32)
    blobs = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
    blobs += xx * slope_x + (yy * slope_y + base)  # gradient
    return blobs


def _pick_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """Of 24 random colours, the one farthest from every colour in `avoid` (K, 3): contrast."""
    candidates = rng.uniform(0, 255, (24, 3))
    distance = np.linalg.norm(candidates[:, None] - avoid[None], axis=2).min(1)  # (24,)
    return candidates[distance.argmax()]


def _make_scene(rng: np.random.Generator, cfg: ShapesConfig):
    """The random content of one image: (scene, background (H, W, 3) float32, colors (N, 3))."""
    height = int(rng.integers(cfg.height[0] // 8, cfg.height[1] // 8 + 1)) * 8
    width = int(rng.integers(cfg.width[0] // 8, cfg.width[1] // 8 + 1)) * 8
    background = _background(rng, height, width)
    scene = Scene(height=height, width=width, min_visible=cfg.min_visible)
    centers, sizes, colors = [], [], []
    max_size = cfg.max_size_frac * min(height, width)
    for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
        for _ in range(cfg.max_tries):
            label = int(rng.integers(len(SHAPES_CLASSES)))
            if centers and rng.random() < cfg.near_prob:
                # Crowding: a similar-sized object overlapping an existing one.
                ref = int(rng.integers(len(centers)))
                size = min(sizes[ref] * rng.uniform(0.6, 1.15), max_size)
                center = centers[ref] + sizes[ref] * rng.uniform(-0.4, 0.4, 2)
            else:
                size = float(np.exp(rng.uniform(np.log(cfg.min_size), np.log(max_size))))
                center = rng.uniform(0, 1, 2) * (width, height)
            polygon = _polygon(rng, label, size)
            low, high = -polygon.min(0), np.array([width - 1, height - 1]) - polygon.max(0)
            if np.any(low > high):
                continue
            center = np.clip(center, low, high)  # keep the whole shape inside the image
            if scene.try_add(polygon + center, label) is None:
                continue
            y0, x0, mask = scene.masks[-1]
            y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
            under = background[y0:y1, x0:x1][mask].mean(0)
            # Contrast with the background and with every object whose box touches this one,
            # so neighbours of one colour never merge into one blob.
            near = [
                colors[k]
                for k, (v, u, m) in enumerate(scene.masks[:-1])
                if v <= y1 and y0 <= v + m.shape[0] and u <= x1 and x0 <= u + m.shape[1]
            ]
            colors.append(_pick_color(rng, np.stack([under, *near])))
            centers.append(center)
            sizes.append(size)
            break
    return scene, background, np.array(colors).reshape(-1, 3)


def _make_image(rng: np.random.Generator, cfg: ShapesConfig):
    """One image: returns (uint8 BGR image, boxes (N, 4) xyxy, labels (N,), visible pixels (N,))."""
    scene, background, colors = cfg.make_scene(rng)
    image = render_image(scene, background, colors)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)  # soften the aliased edges like a camera would
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= rng.uniform(3, 10)
    image += noise
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, scene.boxes(), np.array(scene.labels, np.int64), scene.visible_pixels()


# ----------------------------------------------------------------------------- writing


def _write_image(images_dir: Path, split: str, index: int, cfg: ShapesConfig):
    # One RNG per image, keyed by (seed, split, index): images are independent of order and threads.
    rng = np.random.default_rng([cfg.seed, ("train", "val").index(split), index])
    image, boxes, labels, pixels = _make_image(rng, cfg)
    path = images_dir / f"{index:06d}.jpg"
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
        raise OSError(f"shapes generator: could not write {path}")
    return path.name, image.shape[:2], boxes, labels, pixels


def _write_split(folder: Path, split: str, count: int, cfg: ShapesConfig) -> None:
    images_dir = folder / "images" / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    # numpy and cv2 release the GIL in the per-pixel work, so threads give ~1.5x on 2 cores.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        made = pool.map(lambda index: _write_image(images_dir, split, index, cfg), range(count))
        for image_id, (file_name, (height, width), boxes, labels, pixels) in enumerate(made, start=1):
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for box, label, area in zip(boxes.tolist(), labels.tolist(), pixels.tolist()):
                x0, y0, x1, y1 = box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": area,  # visible pixels, like a COCO mask area
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": i + 1, "name": name, "supercategory": cfg.supercategory} for i, name in enumerate(cfg.classes)]
    info = {"description": f"otadet synthetic {cfg.builtin} v{cfg.version}, {split}", **dataclasses.asdict(cfg)}
    (folder / "annotations").mkdir(exist_ok=True)
    with open(folder / "annotations" / f"{split}.json", "w", encoding="utf-8") as f:
        json.dump({"info": info, "images": images, "annotations": annotations, "categories": categories}, f)


def generator_settings(cfg) -> dict:
    """What `generate.json` records: the settings plus the drawing version (JSON types)."""
    # The shapes record has no 'builtin' key: caches written before the crowd builtin stay valid.
    head = {"version": cfg.version} if cfg.builtin == "shapes" else {"builtin": cfg.builtin, "version": cfg.version}
    return json.loads(json.dumps({**head, **dataclasses.asdict(cfg)}))


def _remove_stale_partials(root: Path) -> None:
    """Delete temp folders left by killed generations (their process is gone)."""
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def generate_shapes(
    root: str | os.PathLike, *, seed: int = 0, num_train: int = 800, num_val: int = 200, **options
) -> Path:
    """Write the shapes dataset to `root` (which must not exist yet) and return `root`.

    `options` are the other `ShapesConfig` fields (width, height, objects, min_size, ...).
    Written into a temporary sibling folder that is renamed to `root` at the end, so a killed
    run never leaves a half dataset at `root`. If another process finished `root` first, its
    copy is kept.
    """
    return generate_builtin(root, ShapesConfig(seed=seed, num_train=num_train, num_val=num_val, **options))


def generate_builtin(root: str | os.PathLike, cfg) -> Path:
    """Write the built-in dataset of `cfg` (ShapesConfig or crowd.CrowdConfig) to `root`, as `generate_shapes`."""
    root = Path(root).expanduser()
    if root.exists():
        raise FileExistsError(f"{cfg.builtin} generator: {root} already exists — delete it to generate again")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        _write_split(partial, "train", cfg.num_train, cfg)
        _write_split(partial, "val", cfg.num_val, cfg)
        (partial / "generate.json").write_text(json.dumps(generator_settings(cfg), indent=1))
        try:
            partial.rename(root)
        except OSError:
            if not (root / "generate.json").is_file():
                raise
            # A concurrent process (another DDP rank) finished first; use its copy.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root
