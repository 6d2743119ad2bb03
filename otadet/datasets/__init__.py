"""Datasets: data YAMLs, the built-in shapes generator, the COCO reader, transforms and batching."""

from .coco import CocoDetection, read_image
from .data_yaml import DataError, DataSpec, load_data
from .loader import Batch, build_dataloader, build_dataset, collate
from .shapes import SHAPES_CLASSES, generate_shapes, shapes_stats
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, to_tensor_normalized

__all__ = [
    "CocoDetection",
    "read_image",
    "DataError",
    "DataSpec",
    "load_data",
    "Batch",
    "collate",
    "build_dataset",
    "build_dataloader",
    "SHAPES_CLASSES",
    "generate_shapes",
    "shapes_stats",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_transforms",
    "to_tensor_normalized",
]
