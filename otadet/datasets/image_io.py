"""Reading image files safely: what is wrong with a file, its header size, and its pixels.

Every image otadet reads (training, validation, predict) goes through `read_image`, which
first rules out files it must not decode: a path that is not a regular file (a FIFO named
x.jpg would block forever), a JPEG without its end marker (truncated: libjpeg would fill the
rest with grey and only print a line), and an image whose header claims more than
`max_pixels` pixels (a 74-byte PNG can claim 40000x40000). Such a file is None with a reason,
which the callers turn into one warning and a skip, as for a corrupt file.

EXIF orientation (the Ultralytics and detectron2 convention): images are read in the frame a
viewer displays, with the EXIF rotation applied (`exif=True`), for predict and the YOLO and
CrowdHuman readers, whose sizes come from the same headers. COCO's width/height are of the
stored pixels, so the COCO reader reads them unrotated (`exif=False`), unless the json's size
is that of the displayed frame (see `DetectionDataset`).
"""

import os
import stat
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["MAX_PIXELS", "Header", "set_max_pixels", "max_pixels", "read_header", "image_problem", "read_image", "load_image", "apply_orientation"]

MAX_PIXELS = 400_000_000  # default of the `max_pixels` run key: ~20000x20000, 1.2 GB as BGR uint8
_limit = {"max_pixels": MAX_PIXELS}
_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_JPEG_TAIL = 1024  # bytes searched for the end marker: some writers pad after it
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees (transpose, rot 90, transverse, rot 270)


class Header(NamedTuple):
    """What the file header says, without decoding pixels: stored size and EXIF orientation (1-8)."""

    height: int
    width: int
    orientation: int

    def size(self, exif: bool) -> tuple[int, int]:
        """(h, w) of the displayed frame (exif=True) or of the stored pixels."""
        swap = exif and self.orientation in _SWAPS_SIDES
        return (self.width, self.height) if swap else (self.height, self.width)


def set_max_pixels(value: int) -> None:
    """Set the pixel limit (the `max_pixels` run key) for this process and its forked workers."""
    _limit["max_pixels"] = int(value)


def max_pixels() -> int:
    return _limit["max_pixels"]


def read_header(path: str | os.PathLike) -> Header | None:
    """The header of an image file, or None if PIL cannot identify it. Decodes no pixels."""
    from PIL import Image, UnidentifiedImageError

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # otadet applies its own limit, max_pixels, to this size
    try:
        with Image.open(path) as image:
            w, h = image.size
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # a malformed EXIF block: the pixels are still readable, unrotated
                orientation = 1
        return Header(int(h), int(w), orientation if 1 <= orientation <= 8 else 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _truncated_jpeg(path: Path, size: int) -> bool:
    """A JPEG ends with the EOI marker FF D9; a file cut short does not."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False  # not a JPEG whatever its name: left to the decoder
        f.seek(max(size - _JPEG_TAIL, 2))
        return b"\xff\xd9" not in f.read()


def image_problem(path: str | os.PathLike, header: Header | None) -> str | None:
    """Why `path` (with its `header`, None if unknown) must not be decoded ('is missing', 'is a
    truncated JPEG', ...), or None if it may be."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        return "is missing"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, device or socket)"
    if path.suffix.lower() in _JPEG_SUFFIXES and _truncated_jpeg(path, info.st_size):
        return "is a truncated JPEG (no end marker)"
    if header is not None and header is not None and header.height * header.width > max_pixels():
        return (
            f"is {header.width}x{header.height} = {header.width * header.height / 1e6:.0f} megapixels, over "
            f"max_pixels={max_pixels()} (raise max_pixels= to read it)"
        )
    return None


_ORIENT = {  # EXIF orientation -> the cv2 operation that displays the stored pixels (PIL's exif_transpose)
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def apply_orientation(image: np.ndarray, orientation: int, *, inverse: bool = False) -> np.ndarray:
    """Stored pixels -> displayed frame for EXIF `orientation` (or back, with inverse=True)."""
    if inverse and orientation in (6, 8):
        orientation = 14 - orientation  # rotating by 90 one way undoes the other; the rest are their own inverse
    op = _ORIENT.get(orientation)
    return image if op is None else np.ascontiguousarray(op(image))


def load_image(path: str | os.PathLike, *, exif: bool = True) -> tuple[np.ndarray | None, str | None, Header | None]:
    """(uint8 (H, W, 3) BGR or None, why it is None, header). Decoded once, at full size."""
    header = read_header(path) if Path(path).is_file() else None
    problem = image_problem(path, header)
    if problem is not None:
        return None, problem, header
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # e.g. a size over OpenCV's own CV_IO_MAX_IMAGE_PIXELS
        image = None
    if image is None:
        return None, "cannot be decoded (corrupt or not an image)", header
    if exif and header is not None:
        image = apply_orientation(image, header.orientation)
    return image, None, header


def read_image(path: str | os.PathLike, *, exif: bool = True) -> np.ndarray | None:
    """uint8 (H, W, 3) BGR in the displayed frame (exif=True) or the stored one, or None if
    missing, not a regular file, truncated, over max_pixels or undecodable (see `load_image`)."""
    return load_image(path, exif=exif)[0]
