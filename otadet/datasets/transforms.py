"""Image + box transforms: small numpy/cv2 callables, composed explicitly.

Each step maps (image uint8 (H, W, 3) BGR, boxes float32 (N, 4) xyxy pixels) to
(image, boxes, scale), where scale is how much the step resized the image (1.0 if not).
`Compose` chains steps, multiplies their scales and ends with `to_tensor_normalized`.

Random steps draw from their own `rng` when given one, else from the module RNG, which the
data loader reseeds in each worker (`seed_rng`) so workers do not repeat each other.
"""

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from ..config import eval_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Resize",
    "RandomHorizontalFlip",
    "Compose",
    "to_tensor_normalized",
    "build_transforms",
    "seed_rng",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

Step = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, float]]

_rng = np.random.default_rng()


def seed_rng(seed: int) -> None:
    """Reseed the module RNG used by random steps built without their own `rng`."""
    global _rng
    _rng = np.random.default_rng(seed)


def _clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Keep (N, 4) xyxy boxes inside the image against float rounding (w - x2 can be -1e-6)."""
    return np.clip(boxes, 0, np.array([width, height, width, height], np.float32))


class Resize:
    """Scale so the shorter side is `shorter` unless the longer side would pass `max_size`.

    A list `shorter` is multi-scale training: one size is drawn per call. Boxes are scaled by
    the exact per-axis ratio of the rounded output size; the returned scale is the nominal one.
    """

    def __init__(self, *, shorter: int | Sequence[int], max_size: int, rng: np.random.Generator | None = None):
        self.sizes = [int(s) for s in shorter] if isinstance(shorter, (list, tuple)) else [int(shorter)]
        if not self.sizes or min(self.sizes) <= 0 or max_size <= 0:
            raise ValueError(f"Resize: sizes must be positive, got shorter={shorter}, max_size={max_size}")
        self.max_size = int(max_size)
        self.rng = rng

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        h, w = image.shape[:2]
        if len(self.sizes) == 1:
            shorter = self.sizes[0]
        else:
            shorter = self.sizes[int((self.rng or _rng).integers(len(self.sizes)))]
        scale = min(shorter / min(h, w), self.max_size / max(h, w))
        new_h, new_w = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        ratio = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
        return image, _clip(boxes * ratio, new_h, new_w), scale


class RandomHorizontalFlip:
    """Mirror image and boxes left-right with probability p."""

    def __init__(self, *, p: float = 0.5, rng: np.random.Generator | None = None):
        self.p, self.rng = p, rng

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if (self.rng or _rng).random() >= self.p:
            return image, boxes, 1.0
        w = image.shape[1]
        flipped = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([w, 0, w, 0], np.float32)
        return np.ascontiguousarray(image[:, ::-1]), _clip(flipped, image.shape[0], w), 1.0


def to_tensor_normalized(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) BGR -> float32 (3, H, W) RGB in [0, 1], minus ImageNet mean, over std."""
    mean = np.array(IMAGENET_MEAN, np.float32) * 255
    std = np.array(IMAGENET_STD, np.float32) * 255
    rgb = image[:, :, ::-1].astype(np.float32)  # (H, W, 3)
    rgb -= mean
    rgb /= std
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)


class Compose:
    """Run `steps` in order, then `to_tensor_normalized`: -> (image (3, H, W), boxes (N, 4), scale)."""

    def __init__(self, *, steps: Sequence[Step]):
        self.steps = list(steps)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray, float]:
        scale = 1.0
        for step in self.steps:
            image, boxes, step_scale = step(image, boxes)
            scale *= step_scale
        return to_tensor_normalized(image), boxes.astype(np.float32, copy=False), scale

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(s).__name__ for s in self.steps)})"


def build_transforms(train: bool, imgsz: int | Sequence[int], max_size: int) -> Compose:
    """Training: multi-scale Resize (a list `imgsz` is drawn from) + horizontal flip.

    Evaluation: Resize to one size — the largest of a list — and no randomness.
    """
    if train:
        return Compose(steps=[Resize(shorter=imgsz, max_size=max_size), RandomHorizontalFlip(p=0.5)])
    return Compose(steps=[Resize(shorter=eval_size(imgsz), max_size=max_size)])
