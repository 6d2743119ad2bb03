"""DCNv2 (models/dcn.py) against plain convolutions, the DCN detector configs, and their ONNX export."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from otadet.config import ConfigError, load_model_config, model_config_from_dict
from otadet.engine.exporter import export_onnx
from otadet.models.build import build_detector
from otadet.models.dcn import ModulatedDeformConv2d
from otadet.postprocess import dense_scores

# ota_tiny with the paper's Table 5 DCN placement: CPU-sized, same code paths as ota_x101_dcn.
TINY_DCN = {
    "backbone": {"arch": "resnet10", "norm": "bn", "freeze_at": 0, "dcn_stages": [3, 4, 5]},
    "fpn": {"channels": 32},
    "head": {"channels": 32, "num_convs": 2, "gn_groups": 8, "dcn_last": True},
}


def _conv(groups: int = 2, stride: int = 2, bias: bool = True) -> torch.nn.Conv2d:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 6, 3, stride=stride, padding=1, groups=groups, bias=bias)
    if bias:
        torch.nn.init.normal_(conv.bias)
    return conv


def test_zero_initialised_dcn_is_half_the_conv_it_replaces():
    # Zero offsets = the regular grid; mask sigmoid(0) = 0.5 on every tap; the bias is not masked.
    conv = _conv()
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 8, 11, 14)
    expected = 0.5 * F.conv2d(x, conv.weight, None, stride=2, padding=1, groups=2) + conv.bias[:, None, None]
    torch.testing.assert_close(dcn(x), expected, rtol=1e-5, atol=1e-5)
    assert dcn.weight.shape == conv.weight.shape and dcn.offset_mask.out_channels == 3 * 9


def test_offsets_and_mask_are_split_as_deform_conv2d_reads_them():
    # Offset channels first (dy, dx per tap), then one mask channel per tap. Offsets of exactly
    # dy=+1, dx=-2 on every tap with mask ~1 = the conv applied to the input shifted by (1, -2).
    conv = _conv(groups=1, stride=1, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    with torch.no_grad():
        dcn.offset_mask.bias[:18:2] = 1.0  # dy of the 9 taps
        dcn.offset_mask.bias[1:18:2] = -2.0  # dx
        dcn.offset_mask.bias[18:] = 30.0  # mask logit: sigmoid = 1 - 1e-13
    x = torch.randn(1, 8, 9, 10)
    # out[i, j] = sum_k w[ky, kx] x[i + ky - 1 + 1, j + kx - 1 - 2] (zero outside): a conv with
    # padding 3 computes x[i' - 3 + ky, j' - 3 + kx], so take rows i' = i + 3 and columns j' = j.
    h, w = x.shape[2:]
    expected = F.conv2d(x, conv.weight, None, padding=3)[:, :, 3 : 3 + h, :w]
    torch.testing.assert_close(dcn(x), expected, rtol=1e-5, atol=1e-5)


def test_tiny_dcn_detector_trains_on_cpu():
    torch.manual_seed(0)
    model = build_detector(model_config_from_dict(TINY_DCN), num_classes=3).to(memory_format=torch.channels_last)
    dcns = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(dcns) == 3 + 2  # one block per stage in resnet10 (c3-c5) + the last conv of both towers
    assert all(isinstance(tower[3], ModulatedDeformConv2d) for tower in (model.head.cls_tower, model.head.reg_tower))
    assert not isinstance(model.head.cls_tower[0], ModulatedDeformConv2d)
    # Every offset/mask conv starts at zero even after the head's normal(0.01) init.
    assert all(m.offset_mask.weight.abs().sum() == 0 for m in dcns)
    out = model(torch.randn(2, 3, 128, 160).contiguous(memory_format=torch.channels_last))
    loss = out.cls_logits.sigmoid().mean() + out.boxes.mean() / 100 + out.iou_logits.mean()
    loss.backward()
    assert torch.isfinite(loss)
    # The offsets and masks learn: their conv gets a gradient from the deformable op.
    for m in dcns:
        assert m.offset_mask.weight.grad is not None and m.offset_mask.weight.grad.abs().sum() > 0
        assert m.weight.grad.abs().sum() > 0


def test_x101_dcn_config_builds_the_paper_layout():
    cfg = load_model_config("ota_x101_dcn.yaml")
    assert cfg.backbone.arch == "resnext101_64x4d" and cfg.backbone.dcn_stages == [3, 4, 5] and cfg.head.dcn_last
    model = build_detector(cfg)
    backbone = model.backbone
    # Every block of c3-c5 (4 + 23 + 3 for ResNeXt-101) has a grouped (64x4d) DCN 3x3; c2 has none.
    for layer, blocks in ((backbone.layer2, 4), (backbone.layer3, 23), (backbone.layer4, 3)):
        assert len(layer) == blocks
        assert all(isinstance(b.conv2, ModulatedDeformConv2d) and b.conv2.groups == 64 for b in layer)
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in backbone.layer1.modules())
    assert backbone.layer2[0].conv2.stride == (2, 2) and backbone.layer2[0].conv2.weight.shape == (512, 8, 3, 3)
    assert [type(m).__name__ for m in model.head.reg_tower[::3]] == ["Conv2d"] * 3 + ["ModulatedDeformConv2d"]
    assert cfg.train["opset"] == 19


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dcn_stages": [2]}, "among"),
        ({"dcn_stages": [3, 3]}, "distinct"),
        ({"dcn_stages": "3,4,5"}, "must be list"),
    ],
)
def test_dcn_config_errors_name_the_key(change, match):
    with pytest.raises(ConfigError, match=match):
        model_config_from_dict({**TINY_DCN, "backbone": {**TINY_DCN["backbone"], **change}})


def test_onnx_export_of_dcn(tmp_path):
    torch.manual_seed(0)
    model = build_detector(model_config_from_dict(TINY_DCN), num_classes=2).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero offsets and masks, so the deformable sampling is exercised
        for m in model.modules():
            if isinstance(m, ModulatedDeformConv2d):
                m.offset_mask.weight.normal_(0, 0.05, generator=generator)
                m.offset_mask.bias.normal_(0, 0.5, generator=generator)
    metadata = {"names": ["a", "b"]}
    # Opset 17 (the default) cannot express DeformConv: a clear error instead of an invalid file.
    with pytest.raises(ValueError, match=r"torchvision::deform_conv2d.*opset 19.*opset=19"):
        export_onnx(model, file=tmp_path / "dcn17.onnx", imgsz=256, opset=17, metadata=metadata)
    assert not (tmp_path / "dcn17.onnx").exists()
    # A fixed-size graph keeps the test short (the dynamic export of the same model works too,
    # but traces for ~3x longer); tests/engine/test_exporter.py covers the dynamic axes.
    file = export_onnx(model, file=tmp_path / "dcn.onnx", imgsz=128, opset=19, dynamic=False, metadata=metadata)
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    images = torch.randn((1, 3, 128, 128), generator=generator)
    with torch.no_grad():
        out = model(images)
    reference = torch.cat((out.boxes, dense_scores(out.cls_logits, out.iou_logits)), -1).numpy()
    (onnx_out,) = session.run(["output0"], {"images": images.numpy()})
    assert onnx_out.shape == reference.shape
    assert np.ptp(reference[..., 4:]) > 0.01, "scores are not trivial"
    assert np.abs(onnx_out[..., 4:] - reference[..., 4:]).max() < 1e-5
    assert np.abs(onnx_out[..., :4] - reference[..., :4]).max() < 1e-3


def test_flop_counter_counts_dcn_as_its_conv_plus_the_offset_conv():
    from torch.utils.flop_counter import FlopCounterMode

    conv = _conv()
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(1, 8, 16, 20)

    def flops(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
        return counter.get_total_flops()

    assert flops(dcn) == flops(conv) + flops(dcn.offset_mask) > 0


def test_dcn_runs_under_bf16_autocast():
    # A bf16 offset conv and an fp32 input would reach torchvision's kernel with mixed dtypes.
    conv = _conv()
    dcn = ModulatedDeformConv2d.from_conv(conv)
    with torch.no_grad():
        dcn.offset_mask.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 8, 11, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dcn(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, dcn(x), rtol=0.05, atol=0.05)  # offsets and mask from a bf16 conv
