"""The built-in crowd: persons-like tall silhouettes in heavily overlapping groups (data/shapes-crowd.yaml).

The same machinery as the shapes generator (shapes.py: occlusion scene, backgrounds, colours,
writing), with CrowdHuman's difficulty in place of COCO's variety: one class, ~23 persons per
image on average with a long tail past 100 (log-normal counts), people standing in groups at
similar heights, nearer ones (lower feet) drawn later so they occlude the ones behind. The
CrowdHuman .odgt written from it (shapes_formats.py) carries fbox = the person as drawn,
vbox = its visible extent, and ignore regions for persons too small to see.

Shape letters: N = persons, V = polygon vertices.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .shapes import Scene, _background, _pick_color, check_generator_ranges

__all__ = ["CrowdConfig", "person_polygon", "make_crowd_scene"]


@dataclass(frozen=True)
class CrowdConfig:
    """Generator settings of the built-in crowd; `generate:` in data/shapes-crowd.yaml may set any of these."""

    seed: int = 0
    num_train: int = 800
    num_val: int = 200
    width: tuple[int, int] = (256, 352)  # image width range, multiples of 8
    height: tuple[int, int] = (192, 288)  # image height range, multiples of 8
    persons_median: float = 20.0  # log-normal persons per image: median 20, sigma 0.65 -> ~23 placed (CrowdHuman: 22.6)
    persons_sigma: float = 0.65
    max_persons: int = 150
    fill: float = 1.2  # typical person height = fill * sqrt(image area / persons): how tightly the image is filled
    group_mean: float = 5.0  # mean persons per group (groups are what make full boxes overlap heavily)
    spacing: tuple[float, float] = (0.5, 1.5)  # a group's neighbour distance, in person widths (uniform range)
    min_height: float = 18.0  # px, the smallest person drawn
    min_visible: float = 0.2  # every earlier person keeps at least this fraction of its pixels
    max_tries: int = 20  # placement attempts per person before giving it up
    jpeg_quality: int = 95

    classes: ClassVar[tuple[str, ...]] = ("person",)
    builtin: ClassVar[str] = "crowd"
    supercategory: ClassVar[str] = "person"
    version: ClassVar[int] = 1  # bump when the drawing changes; data/shapes-crowd.yaml names its folder after it
    mask_below_px: ClassVar[int] = 8  # .odgt: visible shorter side below this -> an ignore region ('mask')
    ignore_below_visible: ClassVar[float] = 0.0  # .odgt extra.ignore: none (every drawn person keeps >= min_visible)

    def __post_init__(self):
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        check_generator_ranges(self, ("width", "height"))
        if self.num_train < 0 or self.num_val < 0 or self.max_persons < 1:
            raise ValueError("crowd generator: 'num_train', 'num_val' must be >= 0 and 'max_persons' >= 1")

    def make_scene(self, rng: np.random.Generator):
        return make_crowd_scene(rng, self)


# A standing person in a unit-height box, x centred, y down from the top of the head: head arc,
# shoulders, arms to the hands, hips, two legs with a gap (outline clockwise from the neck).
_HEAD_Y, _HEAD_R = 0.09, 0.085
_BODY = np.array([
    [-0.22, 0.22], [-0.25, 0.56], [-0.19, 0.58], [-0.17, 1.0], [-0.035, 1.0],
    [0.0, 0.62], [0.035, 1.0], [0.17, 1.0], [0.19, 0.58], [0.25, 0.56], [0.22, 0.22],
])  # fmt: skip


def person_polygon(rng: np.random.Generator, height: float) -> np.ndarray:
    """A person `height` px tall, feet at y = 0, centred on x = 0, width jittered: (V, 2) float (x, y)."""
    phi = np.linspace(2.6, -2.6, 15)  # the head from the right of the neck over the top to its left
    head = np.stack([_HEAD_R * np.sin(phi), _HEAD_Y - _HEAD_R * np.cos(phi)], 1)
    points = np.concatenate([head, _BODY])
    points[:, 0] *= 0.82 * rng.uniform(0.85, 1.2)  # box aspect w/h ~ 0.41 (CrowdHuman's full-body average)
    lean = rng.uniform(-0.06, 0.06)
    points[:, 0] += lean * (1.0 - points[:, 1])  # a slight lean, feet fixed
    return (points - (0.0, 1.0)) * height


def _num_persons(rng: np.random.Generator, cfg: CrowdConfig) -> int:
    """Log-normal persons per image, in [1, max_persons]: most images a few dozen, a long tail past 100."""
    return int(np.clip(round(cfg.persons_median * np.exp(cfg.persons_sigma * rng.standard_normal())), 1, cfg.max_persons))


def _group_members(rng: np.random.Generator, cfg: CrowdConfig, count: int, width: int, height: int) -> np.ndarray:
    """Feet positions and heights of `count` persons in groups: (N, 3) float (x, feet_y, h), drawing order."""
    typical = float(np.clip(cfg.fill * np.sqrt(width * height / count), cfg.min_height, 0.9 * height))
    members = []
    while len(members) < count:
        size = min(1 + int(rng.poisson(cfg.group_mean - 1)), count - len(members))
        h = float(np.clip(typical * np.exp(rng.normal(0, 0.3)), cfg.min_height, 0.9 * height))
        cx, feet = rng.uniform(0, width), rng.uniform(h, height)
        step = rng.uniform(*cfg.spacing) * 0.41 * h  # a row of people, neighbours `step` apart (px)
        for j in range(size):
            x = cx + (j - (size - 1) / 2) * step + rng.normal(0, 0.12 * 0.41 * h)
            mh = float(np.clip(h * rng.uniform(0.9, 1.1), cfg.min_height, 0.9 * height))
            members.append((x, feet + rng.normal(0, 0.04 * h), mh))
    members = np.array(members, np.float64).reshape(-1, 3)
    return members[np.argsort(members[:, 1], kind="stable")]  # far (higher feet) first: near ones occlude them


def make_crowd_scene(rng: np.random.Generator, cfg: CrowdConfig):
    """The random content of one crowd image: (scene, background (H, W, 3) float32, colors (N, 3))."""
    height = int(rng.integers(cfg.height[0] // 8, cfg.height[1] // 8 + 1)) * 8
    width = int(rng.integers(cfg.width[0] // 8, cfg.width[1] // 8 + 1)) * 8
    background = _background(rng, height, width)
    scene = Scene(height=height, width=width, min_visible=cfg.min_visible)
    colors = []
    for x, feet, h in _group_members(rng, cfg, _num_persons(rng, cfg), width, height):
        for _ in range(cfg.max_tries):
            polygon = person_polygon(rng, h)
            low, high = -polygon.min(0), np.array([width - 1, height - 1]) - polygon.max(0)
            if np.any(low > high):
                break
            if scene.try_add(polygon + np.clip((x, feet), low, high), 0) is not None:
                y0, x0, mask = scene.masks[-1]
                y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
                near = [colors[k] for k, (v, u, m) in enumerate(scene.masks[:-1])
                        if v <= y1 and y0 <= v + m.shape[0] and u <= x1 and x0 <= u + m.shape[1]]  # fmt: skip
                colors.append(_pick_color(rng, np.stack([background[y0:y1, x0:x1][mask].mean(0), *near])))
                break
            x, feet = x + rng.normal(0, 0.2 * h), feet + rng.normal(0, 0.05 * h)  # refused: step aside a little
    return scene, background, np.array(colors).reshape(-1, 3)
