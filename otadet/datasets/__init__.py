"""Datasets: data YAMLs, the built-in shapes generator, COCO / CrowdHuman / YOLO readers, transforms and batching."""

from .base import DetectionDataset, read_image
from .coco import CocoDetection
from .crowdhuman import CrowdHumanDetection, read_odgt
from .data_yaml import DataError, DataSpec, load_data
from .loader import Batch, build_dataloader, build_dataset, collate
from .shapes import SHAPES_CLASSES, generate_shapes
from .shapes_stats import shapes_stats
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, to_tensor_normalized
from .yolo import YoloDetection

__all__ = [
    "DetectionDataset",
    "CocoDetection",
    "CrowdHumanDetection",
    "YoloDetection",
    "read_odgt",
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
