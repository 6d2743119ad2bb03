"""The network's input convention, applied in its first layer.

The data pipeline always delivers RGB minus the ImageNet mean over its std (the convention of
torchvision's models and otadet's own). A model trained on another one — detectron2 / cvpods'
caffe convention: BGR in [0, 255] minus a mean pixel, std 1 — gets `InputNorm` in front of its
backbone, which undoes the pipeline's normalisation and applies the model's, as one per-channel
affine map (and a channel flip). It exports with the graph, so an .onnx of a converted model takes
the same input tensor as every other otadet model. Shapes: B=batch.
"""

import torch
from torch import Tensor, nn

__all__ = ["InputNorm"]


class InputNorm(nn.Module):
    """(B, 3, H, W) in the pipeline's convention -> (B, 3, H, W) in the model's.

    Per output channel c with source channel k (k = c for rgb, 2 - c for bgr):
        out_c = (x_k * source_std_k + source_mean_k - pixel_mean_c) / pixel_std_c
    Means and stds are in 0-255 units, each in its own channel order. Zero padding (the
    pipeline's mean pixel) stays the mean pixel.
    """

    def __init__(
        self,
        *,
        channel_order: str,
        pixel_mean: list[float],
        pixel_std: list[float],
        source_mean: list[float],
        source_std: list[float],
    ):
        super().__init__()
        assert channel_order in ("rgb", "bgr"), channel_order
        self.flip = channel_order == "bgr"
        src_mean, src_std = torch.tensor(source_mean, dtype=torch.float64), torch.tensor(source_std, dtype=torch.float64)
        if self.flip:
            src_mean, src_std = src_mean.flip(0), src_std.flip(0)
        mean, std = torch.tensor(pixel_mean, dtype=torch.float64), torch.tensor(pixel_std, dtype=torch.float64)
        # Not in the state dict: they follow from the config, and old checkpoints load unchanged.
        self.register_buffer("scale", (src_std / std).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((src_mean - mean) / std).float().view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.flip:
            x = x.flip(1)  # RGB -> BGR
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
