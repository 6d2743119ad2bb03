"""Predict sources: what a user may pass as `source=`, expanded and read one frame at a time.

Accepted: an image file; a video file (read with cv2.VideoCapture, one result per frame); a
folder (its images and videos, by name); a glob; a .txt file listing any of these one per
line; a webcam index (0 or '0'); a numpy uint8 BGR array; a PIL image; a list of these.
Frames are read lazily, so a long video never sits in memory.
"""

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..datasets.image_io import load_image
from ..utils.log import LOGGER

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Source", "Frame", "resolve_sources", "read_frames"]

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm", ".asf", ".gif")
_GLOB_CHARS = ("*", "?", "[")


class Source(NamedTuple):
    """One thing to predict on: an image file or an in-memory image, a video file or a webcam."""

    path: str  # the file; 'image0.jpg', 'image1.jpg', ... for arrays and PIL images; 'webcam0'
    array: np.ndarray | None  # (H, W, 3) uint8 BGR when given in memory
    kind: str = "image"  # image | video | webcam
    index: int | None = None  # the webcam index


class Frame(NamedTuple):
    """One image read from a Source."""

    source: Source
    image: np.ndarray  # (H, W, 3) uint8 BGR
    frame: int | None  # 0-based frame index in a video or webcam stream; None for images
    frames: int | None  # frames in the video when known
    fps: float | None  # of a video or webcam


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


def _is_pil(item) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(item, Image.Image)


def _file_source(path: Path) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
    return Source(str(path), None, kind)


def _webcam(index: int) -> Source:
    # cv2.VideoCapture(-1) means "any camera" on some backends and crashes the process on others.
    if index < 0:
        raise ValueError(f"source={index}: a webcam index is 0, 1, 2, ... (0 is the first camera)")
    return Source(f"webcam{index}", None, "webcam", index)


def _is_media(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def _list_file(path: Path, depth: int) -> list[Source]:
    """The sources named in a .txt file, one per line; relative paths are tried from the list's folder."""
    if depth > 2:
        raise ValueError(f"source list {path}: lists nest more than 2 deep")
    items = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(os.path.expanduser(line))
        if not entry.is_absolute() and not entry.exists() and (path.parent / entry).exists():
            entry = path.parent / entry
        if not entry.exists() and not any(c in line for c in _GLOB_CHARS):
            raise FileNotFoundError(f"source list {path} line {line_no}: {line} does not exist")
        items.append(str(entry))
    if not items:
        raise FileNotFoundError(f"source list {path} names no files")
    return resolve_sources(items, _depth=depth + 1)


def resolve_sources(source, *, _depth: int = 0) -> list[Source]:
    """Expand `source` into Sources, in order (see the module docstring for what is accepted).

    Folders and globs give their images and videos sorted by name. Raises FileNotFoundError
    naming a path that does not exist, an empty folder or a glob without images; TypeError for
    an object of another kind.
    """
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    out: list[Source] = []
    in_memory = 0
    for item in items:
        if isinstance(item, np.ndarray) or _is_pil(item):
            array = item if isinstance(item, np.ndarray) else np.asarray(item.convert("RGB"))[:, :, ::-1]
            out.append(Source(f"image{in_memory}.jpg", _as_bgr(np.ascontiguousarray(array), in_memory)))
            in_memory += 1
            continue
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(_webcam(item))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"source {item!r}: expected an image or video file, folder, glob, .txt list, webcam index, numpy BGR "
                f"array, PIL image, or a list of them; got {type(item).__name__}"
            )
        text = os.path.expanduser(str(item))
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if _is_media(p))
            if not files:
                raise FileNotFoundError(f"source folder {path} has no images or videos ({', '.join(IMAGE_EXTENSIONS)})")
            out += [_file_source(p) for p in files]
        elif path.is_file() and path.suffix.lower() == ".txt":
            out += _list_file(path, _depth)
        elif path.is_file():
            out.append(_file_source(path))  # an explicit file is tried whatever its extension
        elif path.exists():  # reading a FIFO or a device would block or never end
            raise ValueError(f"source {text} is not a regular file, folder or .txt list (a FIFO, device or socket?)")
        elif text.lstrip("-").isdigit():
            out.append(_webcam(int(text)))
        elif any(c in text for c in _GLOB_CHARS):
            files = [p for p in sorted(Path(p) for p in glob.glob(text, recursive=True)) if _is_media(p)]
            if not files:
                raise FileNotFoundError(f"source glob {text} matches no images or videos ({', '.join(IMAGE_EXTENSIONS)})")
            out += [_file_source(p) for p in files]
        else:
            raise FileNotFoundError(
                f"source {text} does not exist: pass an image or video file, a folder, a glob, a .txt list, "
                "a webcam index or an array"
            )
    return out


def _read_capture(src: Source) -> Iterator[Frame]:
    capture = cv2.VideoCapture(src.index if src.kind == "webcam" else src.path)
    if not capture.isOpened():
        if src.kind == "video":  # as an unreadable image: skipped, the other sources still run
            LOGGER.warning(f"WARNING: video {src.path} cannot be opened with cv2.VideoCapture (corrupt, or no codec) — skipped")
            return
        raise OSError(f"cannot open webcam {src.index} with cv2.VideoCapture (no such camera, or it is busy)")
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if src.kind == "video" else 0
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 30.0  # webcams and some containers report 0 or nonsense
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            yield Frame(src, image, index, frames if frames > 0 else None, fps)
            index += 1
    finally:
        capture.release()


def read_frames(sources: list[Source]) -> Iterator[Frame]:
    """Each source's images: one Frame per image, or per frame of a video / webcam (read lazily).

    An unreadable image or video file is skipped with a warning; a webcam that cannot be
    opened raises OSError.
    """
    for src in sources:
        if src.kind in ("video", "webcam"):
            yield from _read_capture(src)
            continue
        image, problem = (src.array, None) if src.array is not None else load_image(src.path)[:2]
        if image is None:
            LOGGER.warning(f"WARNING: {src.path} {problem} — skipped")
            continue
        yield Frame(src, image, None, None, None)
