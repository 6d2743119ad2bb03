"""Prediction: images from files, folders, globs or arrays -> `Results` in original-image pixels.

Preprocessing is validation's, by the same code: the evaluation transforms (resize shorter
side to imgsz, longer side capped at max_size, normalise) and `collate` (zero-pad bottom/right
to a multiple of 32). Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import glob
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from ..datasets.coco import read_image
from ..datasets.loader import collate
from ..datasets.transforms import build_transforms
from ..postprocess import dense_scores, nms
from ..utils.log import LOGGER
from ..utils.paths import increment_path
from ..utils.torch_utils import select_device
from .results import Boxes, Results
from .tta import tta_detect

__all__ = ["IMAGE_EXTENSIONS", "Source", "resolve_sources", "predict"]

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")
_GLOB_CHARS = ("*", "?", "[")
SIZE_DIVISIBLE = 32  # pad inputs as the validation loader does (build_dataloader's default)


class Source(NamedTuple):
    """One image to predict on: a file to read, or an array given in memory."""

    path: str  # the file, or 'image0.jpg', 'image1.jpg', ... for arrays
    array: np.ndarray | None  # (H, W, 3) uint8 BGR when given in memory


def _as_bgr(array: np.ndarray, index: int) -> np.ndarray:
    """A uint8 (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA array -> (H, W, 3) BGR."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"source array {index}: expected a uint8 BGR image of shape (H, W, 3) (as cv2.imread gives), "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    if array.ndim == 2 or array.shape[2] == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def resolve_sources(source) -> list[Source]:
    """Expand `source` into images, in order: a file; a folder (its images, sorted by name); a glob
    (sorted matches that are images); a uint8 BGR array; or a list/tuple mixing these.

    Raises FileNotFoundError naming a path that does not exist, an empty folder or a glob
    without images.
    """
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    out: list[Source] = []
    arrays = 0
    for item in items:
        if isinstance(item, np.ndarray):
            out.append(Source(f"image{arrays}.jpg", _as_bgr(item, arrays)))
            arrays += 1
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"source {item!r}: expected an image file, folder or glob (str or Path), a numpy BGR array, "
                f"or a list of them; got {type(item).__name__}"
            )
        text = os.path.expanduser(str(item))
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if _is_image_file(p))
            if not files:
                raise FileNotFoundError(f"source folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += [Source(str(p), None) for p in files]
        elif path.is_file():
            out.append(Source(str(path), None))  # an explicit file is tried whatever its extension
        elif any(c in text for c in _GLOB_CHARS):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in files if _is_image_file(p)]
            if not files:
                raise FileNotFoundError(f"source glob {text} matches no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += [Source(str(p), None) for p in files]
        else:
            raise FileNotFoundError(f"source {text} does not exist: pass an image file, a folder, a glob or an array")
    return out


def _read(sources: list[Source]) -> Iterator[tuple[Source, np.ndarray]]:
    """Each source with its (H, W, 3) BGR image; an unreadable file is skipped with a warning."""
    for src in sources:
        image = src.array if src.array is not None else read_image(src.path)
        if image is None:
            LOGGER.warning(f"WARNING: {src.path} cannot be read as an image (corrupt or not an image) — skipped")
            continue
        yield src, image


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _unique_name(name: str, used: set[str]) -> str:
    """`name`, or name_2, name_3, ... so two sources with the same file name do not overwrite."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{stem}_{n}{suffix}", n + 1
    used.add(candidate)
    return candidate


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def predict(
    model: nn.Module,
    source,
    *,
    imgsz: int,
    max_size: int,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
    classes: list[int] | None = None,
    device: torch.device | str | None,
    names: list[str] | dict[int, str],
    save: bool = False,
    save_dir: Path | None = None,
    line_width: int = 2,
    batch: int = 1,
    augment: bool = False,
) -> list[Results]:
    """Detect objects in `source` (see resolve_sources) with `model` (already on `device`).

    Returns one Results per readable image, in source order, with boxes (N, 6) in original
    pixels clipped to the image. save=True writes annotated images to save_dir (default
    runs/predict/exp, incremented) under their file names; arrays as image0.jpg, ...
    augment=True: test-time augmentation (engine/tta.py).
    """
    if batch < 1:
        raise ValueError(f"predict: batch must be >= 1, got {batch}")
    device = device if isinstance(device, torch.device) else select_device(device)
    sources = resolve_sources(source)
    if save:
        save_dir = Path(save_dir) if save_dir is not None else increment_path(Path("runs") / "predict" / "exp")
        save_dir.mkdir(parents=True, exist_ok=True)
    transform = build_transforms(False, imgsz, max_size)
    was_training = model.training
    model.eval()

    results: list[Results] = []
    used_names: set[str] = set()
    total = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    done = 0
    try:
        for chunk in _chunks(_read(sources), batch):
            t0 = time.perf_counter()
            samples = []
            for k, (src, image) in enumerate(chunk):
                tensor, _, scale = transform(image, np.zeros((0, 4), np.float32))
                target = {
                    "boxes": torch.zeros((0, 4)),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "image_id": k,
                    "orig_size": image.shape[:2],
                    "scale": scale,
                    "path": src.path,
                }
                samples.append((tensor, target))
            inputs = collate(samples, size_divisible=SIZE_DIVISIBLE)
            resized = [tuple(tensor.shape[1:]) for tensor, _ in samples]  # unpadded (h, w) of each input
            images = inputs.images.to(device)
            t1 = _sync(device)
            outputs = model(images)
            t2 = _sync(device)
            scores = dense_scores(outputs.cls_logits, outputs.iou_logits)  # (B, A, C)
            sizes = torch.tensor(resized, dtype=outputs.boxes.dtype, device=device)  # (B, 2) h, w
            detections = nms(
                outputs.boxes, scores, conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk,
                classes=classes, image_sizes=sizes,
            )  # fmt: skip
            if augment:  # + 17 scaled/flipped passes, one NMS over all (engine/tta.py); timed as postprocess
                kw = dict(conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk, classes=classes, plain=outputs)
                detections = tta_detect(model, images, sizes, **kw)
            chunk_results = []
            for (src, image), (h, w), dets in zip(chunk, resized, detections):
                orig_h, orig_w = image.shape[:2]
                dets = dets.float().cpu()  # (N, 6)
                # Input -> original pixels by the exact per-axis ratio of the rounded resize.
                ratio = torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
                limit = torch.tensor([orig_w, orig_h, orig_w, orig_h], dtype=torch.float32)
                dets[:, :4] = torch.minimum((dets[:, :4] * ratio).clamp(min=0), limit)
                boxes = Boxes(dets, orig_shape=(orig_h, orig_w))
                chunk_results.append(Results(orig_img=image, path=src.path, names=names, boxes=boxes))
            t3 = time.perf_counter()
            n = len(chunk)
            speed = {"preprocess": 1000 * (t1 - t0) / n, "inference": 1000 * (t2 - t1) / n, "postprocess": 1000 * (t3 - t2) / n}
            for r, (h, w) in zip(chunk_results, resized):
                done += 1
                r.speed = dict(speed)
                for key in total:
                    total[key] += speed[key]
                if save:
                    r.save(save_dir / _unique_name(Path(r.path).name, used_names), line_width=line_width)
                LOGGER.info(f"image {done}/{len(sources)} {r.path}: {h}x{w} {r.verbose()}, {speed['inference']:.1f}ms")
            results += chunk_results
    finally:
        model.train(was_training)

    if results:
        mean = {k: v / len(results) for k, v in total.items()}
        LOGGER.info(
            f"Speed: {mean['preprocess']:.1f}ms preprocess, {mean['inference']:.1f}ms inference, "
            f"{mean['postprocess']:.1f}ms postprocess per image"
        )
    if save:
        LOGGER.info(f"Results saved to {save_dir}")
    return results
