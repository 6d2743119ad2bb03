"""Detector networks: backbone -> FPN -> head. otadet.models.build.build_detector makes one from a config."""

from .detector import STRIDES, DenseOutputs, OTADetector, anchor_points

__all__ = ["DenseOutputs", "OTADetector", "STRIDES", "anchor_points"]
