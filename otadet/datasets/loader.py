"""Batching: samples -> one padded `Batch`, and the DataLoader that makes them.

Shape letters: B = images in the batch, G = most gts of any image in the batch (may be 0),
H, W = padded input size.
"""

import os
import random
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils.log import LOGGER
from .base import DetectionDataset
from .coco import CocoDetection
from .crowdhuman import CrowdHumanDetection
from .data_yaml import DataSpec
from .transforms import build_transforms, seed_rng
from .yolo import YoloDetection

__all__ = ["SIZE_DIVISIBLE", "padded_side", "Batch", "collate", "build_dataset", "build_dataloader"]

# Every input is zero-padded bottom/right to a multiple of this (the stride of C5, detectron2's
# size_divisibility): collate here, the predictor, the TTA passes and the exported graphs.
SIZE_DIVISIBLE = 32


def padded_side(side: int, multiple: int = SIZE_DIVISIBLE) -> int:
    """`side` rounded up to a multiple of `multiple`."""
    return -(-side // multiple) * multiple


class Batch(NamedTuple):
    """A padded batch; gts are padded to G with `gt_mask` False, images zero-padded bottom/right."""

    images: Tensor  # (B, 3, H, W) normalised; H, W multiples of size_divisible
    gt_boxes: Tensor  # (B, G, 4) xyxy input pixels, zeros where padded
    gt_labels: Tensor  # (B, G) int64, 0 where padded
    gt_mask: Tensor  # (B, G) bool, False = padding
    ignore_boxes: Tensor  # (B, I, 4) xyxy input pixels of ignore regions (iscrowd, CrowdHuman masks)
    ignore_mask: Tensor  # (B, I) bool, False = padding; I may be 0
    image_ids: Tensor  # (B,) int64 image ids (COCO's; 1..I in file order for CrowdHuman and YOLO)
    scales: Tensor  # (B,) float32 resize factor (input / original)
    orig_sizes: Tensor  # (B, 2) int64 (h, w) of the original image
    paths: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The same batch with every tensor on `device`."""
        return Batch(
            *(f.to(device, non_blocking=non_blocking) if isinstance(f, Tensor) else f for f in self)
        )


def collate(samples: Sequence[tuple[Tensor, dict]], size_divisible: int = SIZE_DIVISIBLE) -> Batch:
    """Stack `DetectionDataset` samples into a `Batch`, padding images up to a multiple of size_divisible."""
    images = [image for image, _ in samples]
    targets = [target for _, target in samples]
    b = len(samples)
    h = max(image.shape[1] for image in images)
    w = max(image.shape[2] for image in images)
    h, w = padded_side(h, size_divisible), padded_side(w, size_divisible)
    padded = images[0].new_zeros((b, 3, h, w))  # (B, 3, H, W)
    for k, image in enumerate(images):
        padded[k, :, : image.shape[1], : image.shape[2]] = image
    g = max(len(t["labels"]) for t in targets)
    gt_boxes = torch.zeros((b, g, 4), dtype=torch.float32)  # (B, G, 4)
    gt_labels = torch.zeros((b, g), dtype=torch.int64)  # (B, G)
    gt_mask = torch.zeros((b, g), dtype=torch.bool)  # (B, G)
    for k, t in enumerate(targets):
        n = len(t["labels"])
        gt_boxes[k, :n] = t["boxes"]
        gt_labels[k, :n] = t["labels"]
        gt_mask[k, :n] = True
    # Ignore regions: a sample may carry "ignore_boxes" (N, 4) in the same pixels as "boxes".
    ignores = [t.get("ignore_boxes", torch.zeros(0, 4)).reshape(-1, 4) for t in targets]
    ignore_boxes = torch.zeros((b, max(len(x) for x in ignores), 4), dtype=torch.float32)  # (B, I, 4)
    ignore_mask = torch.zeros(ignore_boxes.shape[:2], dtype=torch.bool)  # (B, I)
    for k, x in enumerate(ignores):
        ignore_boxes[k, : len(x)] = x
        ignore_mask[k, : len(x)] = True
    return Batch(
        images=padded,
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        gt_mask=gt_mask,
        ignore_boxes=ignore_boxes,
        ignore_mask=ignore_mask,
        image_ids=torch.tensor([t["image_id"] for t in targets], dtype=torch.int64),
        scales=torch.tensor([t["scale"] for t in targets], dtype=torch.float32),
        orig_sizes=torch.tensor([t["orig_size"] for t in targets], dtype=torch.int64).reshape(b, 2),
        paths=[t["path"] for t in targets],
    )


class _Collate:
    """`collate` with a fixed size_divisible, picklable for worker processes."""

    def __init__(self, size_divisible: int):
        self.size_divisible = size_divisible

    def __call__(self, samples: Sequence[tuple[Tensor, dict]]) -> Batch:
        return collate(samples, self.size_divisible)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker base_seed + worker_id, drawn from the loader's seeded generator.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    seed_rng(seed)
    cv2.setNumThreads(0)  # workers are the parallelism; cv2's own threads would oversubscribe


def build_dataset(
    spec: DataSpec, split: Literal["train", "val"], *, imgsz: int | list[int], max_size: int, augment: bool
) -> DetectionDataset:
    """The `split` of `spec` (COCO, CrowdHuman or YOLO reader) with training (multi-scale + flip) or evaluation transforms."""
    transform = build_transforms(augment, imgsz, max_size)
    images, annotations = spec.images(split), spec.annotations(split)
    if spec.format == "crowdhuman":
        return CrowdHumanDetection(
            images_dir=images, ann_file=annotations, transform=transform, names=spec.names, box=spec.box or "fbox"
        )
    if spec.format == "yolo":
        return YoloDetection(images_dir=images, labels_dir=annotations, transform=transform, names=spec.names)
    return CocoDetection(images_dir=images, ann_file=annotations, transform=transform, names=spec.names)


def _usable_workers(workers: int) -> int:
    """`workers` capped at the CPUs this process may use: more only cost memory (each worker holds a
    copy of the process), and workers=99999 would fork until the machine runs out. The samples do
    not depend on the number of workers (augmentations are seeded per image)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers > cpus:
        LOGGER.info(f"workers={workers} capped at {cpus}, the CPUs available to this process")
        return cpus
    return workers


def build_dataloader(
    spec: DataSpec,
    split: Literal["train", "val"],
    *,
    imgsz: int | list[int],
    max_size: int,
    batch: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    size_divisible: int = SIZE_DIVISIBLE,
    sampler: Sampler | None = None,
    augment: bool | None = None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    wrap: Callable[[Dataset], Dataset] | None = None,
) -> DataLoader:
    """A DataLoader of `Batch`es over `split`; the dataset is `loader.dataset`.

    augment defaults to split == 'train'. A given `sampler` (e.g. DistributedSampler) owns the
    order, so `shuffle` is then ignored. Same seed -> same order and same augmentations.
    pin_memory defaults to CUDA being available; `wrap` wraps the dataset (the trainer's SeededSamples).
    """
    augment = split == "train" if augment is None else augment
    dataset = build_dataset(spec, split, imgsz=imgsz, max_size=max_size, augment=augment)
    dataset = wrap(dataset) if wrap is not None else dataset
    workers = _usable_workers(workers)
    generator = torch.Generator()
    generator.manual_seed(seed)
    if workers == 0:
        seed_rng(seed)  # augmentations run in this process
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_Collate(size_divisible),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
    )
