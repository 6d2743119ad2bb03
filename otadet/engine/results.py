"""Prediction results: the boxes of one image, in its original pixels, and how to show them.

`Results` holds the original BGR image, its detections as `Boxes`, class names and timing;
it plots (cv2), saves, and turns into JSON. Shapes: N = detections.
"""

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["Boxes", "Results", "class_colour"]

# One colour per class, cycled by class index (Ultralytics' palette), as RGB hex.
_PALETTE_HEX = (
    "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
    "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7",
)  # fmt: skip
_PALETTE_BGR = tuple((int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _PALETTE_HEX)


def class_colour(cls: int) -> tuple[int, int, int]:
    """The BGR colour of class index `cls`: the same in every image and run."""
    return _PALETTE_BGR[int(cls) % len(_PALETTE_BGR)]


def _plural(name: str, n: int) -> str:
    if n == 1:
        return name
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if len(name) > 1 and name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


class Boxes:
    """Detections of one image in original-image pixels.

    Args:
        data: (N, 6) x1 y1 x2 y2 score class.
        orig_shape: (h, w) of the original image.
    """

    def __init__(self, data: Tensor, *, orig_shape: tuple[int, int]):
        if data.ndim != 2 or data.shape[1] != 6:
            raise ValueError(f"Boxes: expected data of shape (N, 6) x1 y1 x2 y2 score class, got {tuple(data.shape)}")
        self.data = data
        self.orig_shape = (int(orig_shape[0]), int(orig_shape[1]))

    @property
    def xyxy(self) -> Tensor:
        """(N, 4) corners x1 y1 x2 y2."""
        return self.data[:, :4]

    @property
    def xywh(self) -> Tensor:
        """(N, 4) centre x, centre y, width, height (Ultralytics' convention; COCO's is top-left)."""
        xyxy = self.xyxy
        return torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)

    @property
    def conf(self) -> Tensor:
        """(N,) scores, sqrt(class probability x predicted IoU)."""
        return self.data[:, 4]

    @property
    def cls(self) -> Tensor:
        """(N,) class indices (float, as stored)."""
        return self.data[:, 5]

    def cpu(self) -> "Boxes":
        return Boxes(self.data.cpu(), orig_shape=self.orig_shape)

    def numpy(self) -> np.ndarray:
        """(N, 6) float array x1 y1 x2 y2 score class."""
        return self.data.detach().cpu().numpy()

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        return f"Boxes({len(self)} detections, orig_shape={self.orig_shape})"


class Results:
    """The detections of one image.

    Args:
        orig_img: (H, W, 3) uint8 BGR, the image as read.
        path: its file, or a name like 'image0.jpg' for an array source.
        names: class names, a list or {index: name}.
        boxes: its detections in original pixels.
        speed: ms spent on it: {'preprocess', 'inference', 'postprocess'}.
        frame: its 0-based frame index when it comes from a video or webcam, else None.
    """

    def __init__(
        self,
        *,
        orig_img: np.ndarray,
        path: str,
        names: list[str] | dict[int, str],
        boxes: Boxes,
        speed: dict[str, float] | None = None,
        frame: int | None = None,
    ):
        self.orig_img = orig_img
        self.frame = frame
        self.orig_shape = tuple(orig_img.shape[:2])
        self.path = str(path)
        self.names = dict(enumerate(names)) if not isinstance(names, dict) else dict(names)
        self.boxes = boxes
        self.speed = dict(speed or {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0})

    def __len__(self) -> int:
        return len(self.boxes)

    def _name(self, cls: int) -> str:
        return self.names.get(cls, str(cls))

    def verbose(self) -> str:
        """Counts per class in class order, e.g. '3 circles, 1 triangle'; '(no detections)' if empty."""
        if len(self) == 0:
            return "(no detections)"
        classes, counts = np.unique(self.boxes.cls.cpu().numpy().astype(int), return_counts=True)
        return ", ".join(f"{n} {_plural(self._name(c), n)}" for c, n in zip(classes.tolist(), counts.tolist()))

    def __repr__(self) -> str:
        h, w = self.orig_shape
        frame = "" if self.frame is None else f" frame {self.frame}"
        return f"Results({self.path!r}{frame}, {w}x{h}: {self.verbose()})"

    def plot(self, line_width: int = 2, *, labels: bool = True, conf: bool = True) -> np.ndarray:
        """A copy of orig_img (H, W, 3) BGR with each box drawn in its class colour and labelled 'name 0.87'."""
        image = np.ascontiguousarray(self.orig_img.copy())
        lw = max(int(line_width), 1)
        # Labels scale with the image: a 640 px image gets lw/3, small images no less than 0.3.
        short_side = min(image.shape[:2])
        font_scale = max(lw / 3 * short_side / 640, 0.3)
        thickness = max(round((lw - 1) * short_side / 640), 1)
        # Lowest score first, so the most confident boxes and labels end up on top.
        for x1, y1, x2, y2, score, cls in reversed(self.boxes.numpy().tolist()):
            colour = class_colour(int(cls))
            p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
            cv2.rectangle(image, p1, p2, colour, lw, cv2.LINE_AA)
            if not labels:
                continue
            text = f"{self._name(int(cls))} {score:.2f}" if conf else self._name(int(cls))
            (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            above = p1[1] - th - baseline - 2 >= 0  # label above the box unless it leaves the image
            top = p1[1] - th - baseline - 2 if above else p1[1]
            cv2.rectangle(image, (p1[0], top), (p1[0] + tw + 2, top + th + baseline + 2), colour, -1, cv2.LINE_AA)
            text_colour = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)  # readable on light and dark
            origin = (p1[0] + 1, top + th + 1)
            cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour, thickness, cv2.LINE_AA)
        return image

    def save(self, filename: str | os.PathLike, *, line_width: int = 2) -> Path:
        """Write the plotted image to `filename` (format from its extension); returns the path."""
        filename = Path(filename)
        filename.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(filename), self.plot(line_width)):
            raise OSError(f"could not write {filename}: use an image extension cv2 can encode (.jpg, .png, .bmp)")
        return filename

    def to_json(self) -> list[dict]:
        """One dict per detection: name, class, confidence, box {x1, y1, x2, y2} in original pixels."""
        return [
            {
                "name": self._name(int(cls)),
                "class": int(cls),
                "confidence": round(float(score), 5),
                "box": {"x1": round(x1, 3), "y1": round(y1, 3), "x2": round(x2, 3), "y2": round(y2, 3)},
            }
            for x1, y1, x2, y2, score, cls in self.boxes.numpy().tolist()
        ]

    def yolo_lines(self, *, save_conf: bool = False) -> list[str]:
        """YOLO label lines 'class xc yc w h' normalised by the image size (+ ' score' if save_conf)."""
        h, w = self.orig_shape
        xywh = (self.boxes.xywh.detach().cpu().double() / torch.tensor([w, h, w, h], dtype=torch.float64)).tolist()
        lines = []
        for (xc, yc, bw, bh), score, cls in zip(xywh, self.boxes.conf.tolist(), self.boxes.cls.tolist()):
            line = f"{int(cls)} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}"
            lines.append(f"{line} {score:.5f}" if save_conf else line)
        return lines

    def save_txt(self, filename: str | os.PathLike, *, save_conf: bool = False) -> Path:
        """Write `yolo_lines` to `filename` (an empty file when nothing was detected); returns the path."""
        filename = Path(filename)
        filename.parent.mkdir(parents=True, exist_ok=True)
        lines = self.yolo_lines(save_conf=save_conf)
        filename.write_text("".join(line + "\n" for line in lines))
        return filename
