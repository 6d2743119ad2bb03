"""Benchmark metrics: CrowdHuman (MR⁻², AP, recall). COCO's are pycocotools' (otadet.engine.validator)."""

from .crowdhuman import evaluate as crowdhuman_evaluate

__all__ = ["crowdhuman_evaluate"]
