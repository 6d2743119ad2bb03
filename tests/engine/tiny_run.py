"""The tiny model for engine tests: run settings that train it in seconds (shared by the training
tests and their spawned ranks) and a randomly weighted copy whose outputs vary."""

import torch
from torch import nn

from otadet.config import load_model_config
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
