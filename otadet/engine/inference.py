"""What predict and val share between a loaded image and its detections in original pixels.

    preprocess   frames -> a Batch: the evaluation transforms and `collate` (validation's, by the same code)
    detect       dense outputs -> per image (N, 6) detections in input pixels: dense_scores + NMS,
                 or the test-time augmentation passes and one NMS (engine/tta.py)
    to_original  input pixels -> original pixels, by the exact per-axis ratio of the rounded resize
    device_time  wall time once the device has finished its queued work, for the speed figures

The forward itself (precision, autocast) is engine/precision.py's `forward`.
Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..datasets.loader import Batch, collate
from ..models.detector import DenseOutputs
from ..postprocess import dense_scores, nms
from .tta import tta_detect

__all__ = ["preprocess", "detect", "to_original", "device_time"]


def preprocess(images: Sequence[np.ndarray], paths: Sequence[str], transform) -> tuple[Batch, list[tuple[int, int]]]:
    """Images (H, W, 3) BGR -> (the padded Batch, each image's unpadded input (h, w))."""
    samples = []
    for k, (image, path) in enumerate(zip(images, paths)):
        tensor, _, scale = transform(image, np.zeros((0, 4), np.float32))
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "image_id": k,
                  "orig_size": image.shape[:2], "scale": scale, "path": path}  # fmt: skip
        samples.append((tensor, target))
    return collate(samples), [tuple(tensor.shape[1:]) for tensor, _ in samples]


def detect(
    model: nn.Module, images: Tensor, outputs: DenseOutputs, sizes: Tensor, *, conf: float, iou: float, max_det: int,
    pre_nms_topk: int, classes: list[int] | None = None, augment: bool = False,
) -> list[Tensor]:  # fmt: skip
    """B tensors (N, 6) x1 y1 x2 y2 score class in input pixels, clipped to `sizes` (B, 2) (h, w).
    augment=True adds the 17 other scaled/flipped passes of `images` before one NMS (engine/tta.py)."""
    if augment:
        return tta_detect(model, images, sizes, conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk, classes=classes, plain=outputs)
    scores = dense_scores(outputs.cls_logits, outputs.iou_logits)  # (B, A, C)
    return nms(
        outputs.boxes, scores, conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk, classes=classes,
        image_sizes=sizes.to(outputs.boxes.dtype),
    )  # fmt: skip


def to_original(
    dets: Tensor, input_hw: tuple[float, float], original_hw: tuple[float, float], *, dtype: torch.dtype = torch.float32,
    clip: bool = True,
) -> Tensor:  # fmt: skip
    """(N, 6) detections in input pixels -> (N, 6) on the CPU in `dtype`, boxes in original pixels.

    The ratio is per axis, original / input side, exact for the rounded resize (each side rounds
    on its own) and for an annotation size that differs from the file's. clip=True clips the boxes
    to the original image (predict); validation scores them unclipped, as COCO evaluation does."""
    (h, w), (orig_h, orig_w) = input_hw, original_hw
    dets = dets.to("cpu", dtype)
    boxes = dets[:, :4] * torch.tensor([orig_w / w, orig_h / h] * 2, dtype=dtype)
    if clip:
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([orig_w, orig_h] * 2, dtype=dtype))
    return torch.cat((boxes, dets[:, 4:]), 1)


def device_time(device: torch.device) -> float:
    """Wall time after the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
