"""Where predictions go under save_dir, one sink per kind of output (the predictor writes each
result to every sink it was asked for, in this order):

    ImageSink   save=True: the annotated image under the source's file name (arrays: image0.jpg, ...)
    VideoSink   save=True: annotated video frames, <name>.mp4 (or .avi where mp4 cannot be encoded)
    TxtSink     save_txt=True: YOLO labels labels/<name>.txt (videos: <name>_<frame>.txt), with the score if save_conf
    JsonSink    save_json=True: predictions.json, COCO-style rows plus file_name (and frame)

Two sources with the same file name do not overwrite each other (OutputNames: name, name_2, ...).
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np

from .results import Results
from .sources import Frame, Source

__all__ = ["OutputNames", "ImageSink", "VideoSink", "TxtSink", "JsonSink", "build_sinks"]


class OutputNames:
    """One unique output file name per source (id(source) -> its name)."""

    def __init__(self):
        self.used: set[str] = set()
        self.names: dict[int, str] = {}

    def __call__(self, source: Source) -> str:
        key = id(source)
        if key not in self.names:
            base = Path(source.path).name if source.kind != "webcam" else f"{source.path}.mp4"
            self.names[key] = _unique_name(base, self.used)
        return self.names[key]


def _unique_name(name: str, used: set[str]) -> str:
    """`name`, or name_2, name_3, ... so two sources with the same file name do not overwrite."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{stem}_{n}{suffix}", n + 1
    used.add(candidate)
    return candidate


class ImageSink:
    def __init__(self, save_dir: Path, line_width: int):
        self.save_dir, self.line_width = save_dir, line_width

    def write(self, result: Results, item: Frame, name: str) -> None:
        if item.frame is None:
            result.save(self.save_dir / name, line_width=self.line_width)

    def close(self) -> None:
        pass


class VideoSink:
    """One cv2.VideoWriter per video/webcam source, opened at its first frame, closed at its last.

    mp4 (mp4v) when this OpenCV build can encode it, else avi (MJPG)."""

    def __init__(self, save_dir: Path, line_width: int):
        self.save_dir, self.line_width = save_dir, line_width
        self.key: tuple | None = None
        self.writer: cv2.VideoWriter | None = None
        self.files: list[Path] = []

    def write(self, result: Results, item: Frame, name: str) -> None:
        if item.frame is not None:
            self._write(item.source, result.plot(self.line_width), item.fps, name)

    def _write(self, source: Source, image: np.ndarray, fps: float, name: str) -> None:
        key = (source.path, id(source))
        if key != self.key:
            self.close()
            self.key = key
            self.writer = self._open(Path(name).stem, fps, image.shape[1], image.shape[0])
        self.writer.write(image)

    def _open(self, stem: str, fps: float, w: int, h: int) -> cv2.VideoWriter:
        for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
            file = self.save_dir / f"{stem}{suffix}"
            writer = cv2.VideoWriter(str(file), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
            if writer.isOpened():
                self.files.append(file)
                return writer
            writer.release()
        raise OSError(f"cannot write {stem}.mp4 (mp4v) or {stem}.avi (MJPG) with this OpenCV build")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.writer, self.key = None, None


class TxtSink:
    def __init__(self, save_dir: Path, save_conf: bool):
        self.save_dir, self.save_conf = save_dir, save_conf

    def write(self, result: Results, item: Frame, name: str) -> None:
        stem = Path(name).stem if item.frame is None else f"{Path(name).stem}_{item.frame}"
        result.save_txt(self.save_dir / "labels" / f"{stem}.txt", save_conf=self.save_conf)

    def close(self) -> None:
        pass


class JsonSink:
    """Rows collected per result; predictions.json written by finish(), once every result is in."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self.rows: list[dict] = []
        self.count = 0

    def write(self, result: Results, item: Frame, name: str) -> None:
        self.count += 1
        stem = Path(result.path).stem
        image_id = int(stem) if item.frame is None and stem.isnumeric() else self.count - 1
        self.rows += _json_rows(result, image_id)

    def close(self) -> None:
        pass

    def finish(self) -> None:
        (self.save_dir / "predictions.json").write_text(json.dumps(self.rows))


def _json_rows(result: Results, image_id) -> list[dict]:
    """COCO-style rows: bbox [x, y, w, h] top-left in original pixels, category_id = class index."""
    rows = []
    for x1, y1, x2, y2, score, cls in result.boxes.numpy().tolist():
        row = {"image_id": image_id, "file_name": result.path, "category_id": int(cls),
               "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)], "score": round(score, 5)}  # fmt: skip
        if result.frame is not None:
            row["frame"] = result.frame
        rows.append(row)
    return rows


def build_sinks(save_dir: Path, *, save: bool, save_txt: bool, save_conf: bool, save_json: bool, line_width: int) -> list:
    """The sinks asked for, in the order each result is written to them."""
    sinks: list = [ImageSink(save_dir, line_width), VideoSink(save_dir, line_width)] if save else []
    if save_txt:
        sinks.append(TxtSink(save_dir, save_conf))
    if save_json:
        sinks.append(JsonSink(save_dir))
    return sinks
