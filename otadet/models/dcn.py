"""Modulated deformable convolution (DCNv2, Zhu et al. CVPR 2019) on torchvision.ops.DeformConv2d.

The paper's strongest OTA model (Table 5) puts DCNv2 in the 3x3 convs of ResNeXt stages
c3-c5 and in the last conv of each head tower. Each DCN layer predicts, from its own input,
2 offsets (dy, dx) and 1 modulation scalar per kernel tap with a plain conv initialised to
zero: training starts from the regular sampling grid with every tap weighted sigmoid(0) = 0.5,
as the DCNv2 reference code does. Its `weight` is named and shaped as the nn.Conv2d it
replaces, so ImageNet state dicts load into it unchanged (the offset conv is new).

ONNX has this operator (torchvision::deform_conv2d -> DeformConv) only from opset 19;
`check_onnx_opset` says so before an export at a lower opset produces an invalid file.
Shapes: B=batch, K=kernel taps (kh*kw), G=offset groups.
"""

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula
from torchvision.ops import DeformConv2d

__all__ = ["ModulatedDeformConv2d", "ONNX_DEFORM_CONV_OPSET", "check_onnx_opset"]

ONNX_DEFORM_CONV_OPSET = 19  # first ONNX opset with DeformConv


class ModulatedDeformConv2d(DeformConv2d):
    """DCNv2: forward(x) = deform_conv2d(x, offset, weight, bias, mask) with offset and mask from a conv on x.

    Args mirror nn.Conv2d; `offset_groups` splits the input channels into groups that share
    one set of offsets and masks (DCNv2 "deformable groups"; 1 in the paper's models).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        offset_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_groups = offset_groups
        # Same geometry as the main conv, so offsets land on its output grid.
        self.offset_mask = nn.Conv2d(
            in_channels, 3 * offset_groups * taps, kernel_size, stride=stride, padding=padding, dilation=dilation
        )
        self.reset_offset_mask()

    def reset_offset_mask(self) -> None:
        """Zero the offset/mask conv: the regular grid, every tap weighted 0.5 (DCNv2 init)."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, offset_groups: int = 1) -> "ModulatedDeformConv2d":
        """A DCNv2 layer with `conv`'s geometry and a copy of its weight (and bias)."""
        assert conv.padding_mode == "zeros" and isinstance(conv.padding, tuple), conv
        dcn = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            stride=conv.stride[0],
            padding=conv.padding[0],
            dilation=conv.dilation[0],
            groups=conv.groups,
            bias=conv.bias is not None,
            offset_groups=offset_groups,
        )
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None:
                dcn.bias.copy_(conv.bias)
        return dcn.to(conv.weight.device)

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        out = self.offset_mask(x)  # (B, 3*G*K, H', W')
        split = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, mask = out[:, :split], torch.sigmoid(out[:, split:])  # (B, 2*G*K, H', W'), (B, G*K, H', W')
        if torch.is_autocast_enabled(x.device.type):
            # torchvision's kernel wants one float dtype; it has no bf16 path (on CUDA its own
            # autocast rule also runs it in fp32). Sampling offsets stay precise this way.
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float(), offset.float(), mask.float())
        return super().forward(x, offset, mask)


@register_flop_formula(torch.ops.torchvision.deform_conv2d)
def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape, **kwargs) -> int:
    """FLOPs of the convolution proper (2 per multiply-add, as torch counts convs); the bilinear
    sampling is left out. Lets utils.torch_utils.model_summary count DCN layers."""
    batch, out_channels, height, width = out_shape
    _, in_per_group, kh, kw = weight_shape
    return 2 * batch * out_channels * height * width * in_per_group * kh * kw


def check_onnx_opset(model: nn.Module, opset: int) -> None:
    """Raise a clear error when `model` has deformable convs and `opset` cannot express them.

    torch's exporter maps torchvision::deform_conv2d to ONNX DeformConv (opset >= 19); asked
    for a lower opset it converts the graph down anyway and writes a file no runtime loads.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, DeformConv2d)]
    if names and opset < ONNX_DEFORM_CONV_OPSET:
        raise ValueError(
            f"ONNX export: the model has {len(names)} deformable convolutions (DCNv2, e.g. {names[0]}), the operator "
            f"torchvision::deform_conv2d, which ONNX has as DeformConv only from opset {ONNX_DEFORM_CONV_OPSET}; "
            f"opset={opset} was asked for — export with opset={ONNX_DEFORM_CONV_OPSET}, "
            "or use a model without DCN (backbone.dcn_stages: [], head.dcn_last: false)"
        )
