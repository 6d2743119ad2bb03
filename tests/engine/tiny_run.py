"""The tiny model for engine tests: run settings that train it in seconds (shared by the training
tests and their spawned ranks) and a randomly weighted copy whose outputs vary."""

import torch
from torch import nn

from otadet.config import load_model_config
from otadet.datasets.shapes import SHAPES_CLASSES, generate_shapes
from otadet.models.build import build_detector

# 8 training images of one size (128x96): with batch 2, 4 iterations per epoch.
TINY_RUN = dict(
    imgsz=64, max_size=96, batch=2, workers=0, warmup_iters=2, optimizer="adamw", lr0=0.004, weight_decay=0.05,
    val=False, deterministic=True, exist_ok=True, verbose=False,
)  # fmt: skip


def perturbed_tiny(num_classes: int = 3) -> nn.Module:
    """ota_tiny with random weights, deterministically perturbed so that scores and boxes vary (eval mode)."""
    torch.manual_seed(0)
    net = build_detector(load_model_config("ota_tiny"), num_classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return net.eval()


def shapes_val_split(folder, write_data_yaml, num_val: int):
    """A split of the built-in shapes data in `folder` (1 train image, `num_val` val images):
    (data YAML, sorted val image files)."""
    root = generate_shapes(folder / "shapes", seed=5, num_train=1, num_val=num_val)
    return write_data_yaml(folder / "shapes.yaml", path=root, names=list(SHAPES_CLASSES)), sorted((root / "images" / "val").glob("*.jpg"))


def perturbed_detector():
    """A Detector holding perturbed_tiny over the shapes classes, its box sides mostly positive
    (~16 px: random ReLU'd distances are often 0)."""
    from otadet.engine.model import Detector

    det = Detector("ota_tiny.yaml", verbose=False)
    det.names, det.net = list(SHAPES_CLASSES), perturbed_tiny(len(SHAPES_CLASSES))
    with torch.no_grad():
        det.net.head.bbox_pred.weight.mul_(0.1)
        det.net.head.bbox_pred.bias.add_(1.0)
    return det
