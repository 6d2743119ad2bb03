"""Prediction: images, videos, webcams or arrays -> `Results` in original-image pixels, streamed.

Four stages (engine/inference.py, engine/sinks.py), the first three shared with validation:
preprocessing is validation's, by the same code (resize shorter side to imgsz, longer side
capped at max_size, normalise, zero-pad bottom/right to a multiple of 32); inference and
post-processing (the model, then dense_scores + NMS or the TTA passes); the map back to the
original image; and the sinks (annotated image / video, YOLO txt, predictions.json). The model
is the PyTorch detector or an `ExportedModel` (.onnx, .torchscript, OpenVINO), which returns the
same dense outputs. `iter_predict` is a generator: one frame is read, predicted and saved at a
time, so memory stays flat over a long video.
Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..datasets.transforms import build_transforms
from ..utils.log import LOGGER
from ..utils.paths import increment_path
from ..utils.torch_utils import select_device
from .inference import detect, device_time, preprocess, to_original
from .precision import InferencePrecision, evaluating, forward, precision_for
from .results import Boxes, Results
from .sinks import OutputNames, build_sinks
from .sources import IMAGE_EXTENSIONS, Frame, Source, read_frames, resolve_sources

__all__ = ["IMAGE_EXTENSIONS", "Source", "resolve_sources", "iter_predict", "predict"]

_STAGES = ("preprocess", "inference", "postprocess")


class _Thresholds(NamedTuple):
    conf: float
    iou: float
    max_det: int
    pre_nms_topk: int
    classes: list[int] | None


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
    thresholds = _Thresholds(conf, iou, max_det, pre_nms_topk, _check_classes(classes, len(names)))
    precision = precision_for(model, half, device)
    sources = resolve_sources(source)
    sinks = []
    if save or save_txt or save_json:
        save_dir = Path(save_dir) if save_dir is not None else increment_path(Path("runs") / "predict" / "exp")
        save_dir.mkdir(parents=True, exist_ok=True)
        sinks = build_sinks(save_dir, save=save, save_txt=save_txt, save_conf=save_conf, save_json=save_json, line_width=line_width)
    transform = build_transforms(False, imgsz, max_size)
    # Checked above at the call; the frames are read, predicted and saved as the caller iterates.
    return _stream(model, sources, transform, precision, device, thresholds, augment, batch, names, sinks, save_dir)


@torch.no_grad()
def _stream(
    model: nn.Module, sources: list[Source], transform, precision: InferencePrecision, device: torch.device,
    thresholds: _Thresholds, augment: bool, batch: int, names, sinks: list, save_dir: Path | None,
) -> Iterator[Results]:  # fmt: skip
    """iter_predict's generator: per chunk of `batch` frames, predict, then write and yield each result."""
    total = dict.fromkeys(_STAGES, 0.0)
    done, images_total, output_name = 0, sum(s.kind == "image" for s in sources), OutputNames()
    with evaluating(model, precision) as input_dtype:
        try:
            for chunk in _chunks(read_frames(sources), batch):
                results, resized, speed = _predict_chunk(model, chunk, transform, precision, input_dtype, device, thresholds, augment, names)
                for item, result, (h, w) in zip(chunk, results, resized):
                    done += 1
                    result.speed = dict(speed)
                    for key in total:
                        total[key] += speed[key]
                    for sink in sinks:
                        sink.write(result, item, output_name(item.source))
                    LOGGER.info(f"{_progress(item, done, images_total)} {result.path}: {h}x{w} {result.verbose()}, {speed['inference']:.1f}ms")
                    yield result
        finally:
            for sink in sinks:
                sink.close()
    if done:
        mean = {k: v / done for k, v in total.items()}
        LOGGER.info(
            f"Speed: {mean['preprocess']:.1f}ms preprocess, {mean['inference']:.1f}ms inference, "
            f"{mean['postprocess']:.1f}ms postprocess per image"
        )
    for sink in sinks:
        getattr(sink, "finish", lambda: None)()
    if sinks:
        LOGGER.info(f"Results saved to {save_dir}")


def _predict_chunk(
    model: nn.Module, chunk: list[Frame], transform, precision: InferencePrecision, input_dtype: torch.dtype,
    device: torch.device, thresholds: _Thresholds, augment: bool, names,
) -> tuple[list[Results], list[tuple[int, int]], dict[str, float]]:  # fmt: skip
    """Preprocess, infer, post-process and map back one chunk of frames; returns its Results, each
    one's input (h, w) and the ms per image of each stage."""
    t0 = time.perf_counter()
    inputs, resized = preprocess([item.image for item in chunk], [item.source.path for item in chunk], transform)
    images = inputs.images.to(device, input_dtype)
    t1 = device_time(device)
    outputs = forward(model, images, precision)  # float32 outputs whatever ran inside
    t2 = device_time(device)
    sizes = torch.tensor(resized, dtype=outputs.boxes.dtype, device=outputs.boxes.device)  # (B, 2) h, w
    # augment: + 17 scaled/flipped passes, one NMS over all (engine/tta.py); timed as postprocess
    detections = detect(model, images, outputs, sizes, **thresholds._asdict(), augment=augment)
    results = [
        Results(orig_img=item.image, path=item.source.path, names=names, frame=item.frame,
                boxes=Boxes(to_original(dets, hw, item.image.shape[:2]), orig_shape=item.image.shape[:2]))
        for item, hw, dets in zip(chunk, resized, detections)
    ]  # fmt: skip
    t3 = time.perf_counter()
    n = len(chunk)
    return results, resized, {"preprocess": 1000 * (t1 - t0) / n, "inference": 1000 * (t2 - t1) / n, "postprocess": 1000 * (t3 - t2) / n}


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_classes(classes, num_classes: int | None) -> list[int] | None:
    if classes is None:
        return None
    classes = [classes] if isinstance(classes, int) and not isinstance(classes, bool) else classes
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"classes={classes!r}: expected a class index or a list of them, e.g. classes=[0,2]")
    if num_classes is not None and any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"classes={classes}: the model has classes 0..{num_classes - 1}")
    return list(classes)


def _progress(item: Frame, done: int, images_total: int) -> str:
    if item.frame is None:
        return f"image {done}/{images_total}"
    of = f"/{item.frames}" if item.frames else ""
    return f"{item.source.kind} (frame {item.frame + 1}{of})"


def predict(model: nn.Module, source, **kwargs) -> list[Results]:
    """iter_predict's results as a list (every image stays in memory: use iter_predict for videos)."""
    return list(iter_predict(model, source, **kwargs))
