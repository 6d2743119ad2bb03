"""Prediction: images, videos, webcams or arrays -> `Results` in original-image pixels, streamed.

Preprocessing is validation's, by the same code: the evaluation transforms (resize shorter
side to imgsz, longer side capped at max_size, normalise) and `collate` (zero-pad bottom/right
to a multiple of 32). The model is the PyTorch detector or an `ExportedModel` (.onnx,
.torchscript), which returns the same dense outputs. `iter_predict` is a generator: one frame
is read, predicted and saved at a time, so memory stays flat over a long video.
Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..datasets.loader import collate
from ..datasets.transforms import build_transforms
from ..postprocess import dense_scores, nms
from ..utils.log import LOGGER
from ..utils.paths import increment_path
from ..utils.torch_utils import select_device
from .backend import ExportedModel
from .precision import forward, log_precision, prepared, resolve_precision
from .results import Boxes, Results
from .sources import IMAGE_EXTENSIONS, Frame, Source, read_frames, resolve_sources
from .tta import tta_detect

__all__ = ["IMAGE_EXTENSIONS", "Source", "resolve_sources", "iter_predict", "predict"]



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


class _VideoWriters:
    """One cv2.VideoWriter per video/webcam source, opened at its first frame, closed at its last.

    mp4 (mp4v) when this OpenCV build can encode it, else avi (MJPG)."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self.key: tuple | None = None
        self.writer: cv2.VideoWriter | None = None
        self.files: list[Path] = []

    def write(self, source: Source, image: np.ndarray, fps: float, name: str) -> None:
        key = (source.path, id(source))
        if key != self.key:
            self.close()
            self.key = key
            h, w = image.shape[:2]
            stem = Path(name).stem
            for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
                file = self.save_dir / f"{stem}{suffix}"
                writer = cv2.VideoWriter(str(file), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
                if writer.isOpened():
                    self.writer = writer
                    self.files.append(file)
                    break
                writer.release()
            else:
                raise OSError(f"cannot write {stem}.mp4 (mp4v) or {stem}.avi (MJPG) with this OpenCV build")
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.writer, self.key = None, None


def _check_classes(classes, num_classes: int | None) -> list[int] | None:
    if classes is None:
        return None
    classes = [classes] if isinstance(classes, int) and not isinstance(classes, bool) else classes
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"classes={classes!r}: expected a class index or a list of them, e.g. classes=[0,2]")
    if num_classes is not None and any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"classes={classes}: the model has classes 0..{num_classes - 1}")
    return list(classes)


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


def iter_predict(
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
    half: bool = False,
    save: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    save_json: bool = False,
    save_dir: Path | None = None,
    line_width: int = 2,
    batch: int = 1,
    augment: bool = False,
) -> Iterator[Results]:
    """Detect objects in `source` (see sources.resolve_sources) with `model` (already on `device`).

    Arguments and sources are checked at the call; returns a generator that yields one Results per readable image or video frame, in source order, with boxes (N, 6)
    in original pixels clipped to the image. Outputs under save_dir (default runs/predict/exp,
    incremented): save=True annotated images under their file names (arrays as image0.jpg,
    ...) and annotated videos (<name>.mp4, or .avi where mp4 cannot be encoded); save_txt=True
    YOLO labels labels/<name>.txt (videos: <name>_<frame>.txt), with the score if save_conf;
    save_json=True predictions.json (COCO-style results plus file_name). half=True runs a
    PyTorch model in FP16 on CUDA, under bf16 autocast on a CPU with bf16 (an OpenVINO IR: its
    bf16 hint; engine/precision.py); boxes, scores and NMS stay float32. augment=True: test-time augmentation (engine/tta.py).
    """
    if batch < 1:
        raise ValueError(f"predict: batch must be >= 1, got {batch}")
    device = device if isinstance(device, torch.device) else select_device(device)
    classes = _check_classes(classes, len(names))
    exported = isinstance(model, ExportedModel)
    precision = resolve_precision(half, device, exported=exported)
    log_precision(precision, half)
    if exported:  # ONNX/TorchScript: the file's precision (a note where half=True cannot apply); OpenVINO: its hint
        model.select_precision(half)
    sources = resolve_sources(source)
    saving = save or save_txt or save_json
    if saving:
        save_dir = Path(save_dir) if save_dir is not None else increment_path(Path("runs") / "predict" / "exp")
        save_dir.mkdir(parents=True, exist_ok=True)
    transform = build_transforms(False, imgsz, max_size)
    # Checked above at the call; the frames are read, predicted and saved as the caller iterates.
    @torch.no_grad()
    def stream() -> Iterator[Results]:
        was_training = model.training
        model.eval()
        restore = contextlib.ExitStack()  # closed in `finally`: float32 weights back after a CUDA half run
        input_dtype = restore.enter_context(prepared(model, precision))
        videos = _VideoWriters(save_dir) if save else None
        json_rows: list[dict] = []
        used_names: set[str] = set()
        source_names: dict[int, str] = {}  # id(source) -> its unique output name
        total = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        done = 0
        images_total = sum(s.kind == "image" for s in sources)
        try:
            for chunk in _chunks(read_frames(sources), batch):
                t0 = time.perf_counter()
                samples = []
                for k, item in enumerate(chunk):
                    tensor, _, scale = transform(item.image, np.zeros((0, 4), np.float32))
                    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "image_id": k,
                              "orig_size": item.image.shape[:2], "scale": scale, "path": item.source.path}  # fmt: skip
                    samples.append((tensor, target))
                inputs = collate(samples)
                resized = [tuple(tensor.shape[1:]) for tensor, _ in samples]  # unpadded (h, w) of each input
                images = inputs.images.to(device, input_dtype)
                t1 = _sync(device)
                outputs = forward(model, images, precision)  # float32 outputs whatever ran inside
                t2 = _sync(device)
                boxes = outputs.boxes  # (B, A, 4)
                sizes = torch.tensor(resized, dtype=boxes.dtype, device=boxes.device)  # (B, 2) h, w
                if augment:  # + 17 scaled/flipped passes, one NMS over all (engine/tta.py); timed as postprocess
                    kw = dict(conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk, classes=classes, plain=outputs)
                    detections = tta_detect(model, images, sizes, **kw)
                else:
                    scores = dense_scores(outputs.cls_logits, outputs.iou_logits)  # (B, A, C)
                    detections = nms(
                        boxes, scores, conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk,
                        classes=classes, image_sizes=sizes,
                    )  # fmt: skip
                chunk_results = []
                for item, (h, w), dets in zip(chunk, resized, detections):
                    orig_h, orig_w = item.image.shape[:2]
                    dets = dets.float().cpu()  # (N, 6)
                    # Input -> original pixels by the exact per-axis ratio of the rounded resize.
                    ratio = torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
                    limit = torch.tensor([orig_w, orig_h, orig_w, orig_h], dtype=torch.float32)
                    dets[:, :4] = torch.minimum((dets[:, :4] * ratio).clamp(min=0), limit)
                    result = Results(orig_img=item.image, path=item.source.path, names=names,
                                     boxes=Boxes(dets, orig_shape=(orig_h, orig_w)), frame=item.frame)  # fmt: skip
                    chunk_results.append(result)
                t3 = time.perf_counter()
                n = len(chunk)
                speed = {"preprocess": 1000 * (t1 - t0) / n, "inference": 1000 * (t2 - t1) / n, "postprocess": 1000 * (t3 - t2) / n}
                for item, result, (h, w) in zip(chunk, chunk_results, resized):
                    done += 1
                    result.speed = dict(speed)
                    for key in total:
                        total[key] += speed[key]
                    if saving:
                        _save(result, item, save_dir, videos, source_names, used_names, save, save_txt, save_conf, line_width)
                    if save_json:
                        stem = Path(result.path).stem
                        image_id = int(stem) if item.frame is None and stem.isnumeric() else done - 1
                        json_rows += _json_rows(result, image_id)
                    LOGGER.info(f"{_progress(item, done, images_total)} {result.path}: {h}x{w} {result.verbose()}, {speed['inference']:.1f}ms")
                    yield result
        finally:
            model.train(was_training)
            restore.close()
            if videos is not None:
                videos.close()

        if done:
            mean = {k: v / done for k, v in total.items()}
            LOGGER.info(
                f"Speed: {mean['preprocess']:.1f}ms preprocess, {mean['inference']:.1f}ms inference, "
                f"{mean['postprocess']:.1f}ms postprocess per image"
            )
        if save_json:
            (save_dir / "predictions.json").write_text(json.dumps(json_rows))
        if saving:
            LOGGER.info(f"Results saved to {save_dir}")

    return stream()


def _progress(item: Frame, done: int, images_total: int) -> str:
    if item.frame is None:
        return f"image {done}/{images_total}"
    of = f"/{item.frames}" if item.frames else ""
    return f"{item.source.kind} (frame {item.frame + 1}{of})"


def _save(result, item, save_dir, videos, source_names, used_names, save, save_txt, save_conf, line_width) -> None:
    """Write one result's annotated image or video frame and its YOLO labels under save_dir."""
    key = id(item.source)
    if key not in source_names:  # two sources with the same file name do not overwrite each other
        base = Path(item.source.path).name if item.source.kind != "webcam" else f"{item.source.path}.mp4"
        source_names[key] = _unique_name(base, used_names)
    name = source_names[key]
    if save and item.frame is None:
        result.save(save_dir / name, line_width=line_width)
    elif save:
        videos.write(item.source, result.plot(line_width), item.fps, name)
    if save_txt:
        stem = Path(name).stem if item.frame is None else f"{Path(name).stem}_{item.frame}"
        result.save_txt(save_dir / "labels" / f"{stem}.txt", save_conf=save_conf)


def predict(model: nn.Module, source, **kwargs) -> list[Results]:
    """iter_predict's results as a list (every image stays in memory: use iter_predict for videos)."""
    return list(iter_predict(model, source, **kwargs))
