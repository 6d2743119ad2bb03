"""The network: output layout, anchor points, freezing, pretrained loading, build from YAML."""

import math

import pytest
import torch
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from otadet.config import load_model_config, model_config_from_dict
from otadet.models.backbone import ResNetBackbone
from otadet.models.build import build_detector
from otadet.models.detector import anchor_points


def test_dense_outputs_cover_every_level_cell():
    model = build_detector(load_model_config("ota_tiny.yaml"), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 160))
    # P3..P7 of a 96x160 input: 12x20, 6x10, 3x5, 2x3, 1x2
    A = 12 * 20 + 6 * 10 + 3 * 5 + 2 * 3 + 1 * 2
    assert out.cls_logits.shape == (2, A, 3) and out.boxes.shape == (2, A, 4) and out.iou_logits.shape == (2, A)
    assert out.points.shape == (A, 2) and out.strides.shape == (A,)
    # Boxes are ltrb >= 0 around their point: the point lies inside (or on) its box.
    assert (out.boxes[..., 0] <= out.points[:, 0]).all() and (out.boxes[..., 3] >= out.points[:, 1]).all()
    # Focal prior: every class starts at probability 0.01.
    assert torch.sigmoid(model.head.cls_logits.bias).allclose(torch.tensor(0.01))


def test_anchor_points_follow_the_flattened_feature_layout():
    features = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    points, strides = anchor_points(features, (8, 16))
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert points.tolist() == expected
    assert strides.tolist() == [8] * 6 + [16] * 2
    # The head flattens (B, K, H, W) row-major the same way: cell (i, j) -> index i*W + j.
    grid = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert grid.flatten(2).transpose(1, 2).squeeze().tolist() == [0, 1, 2, 3, 4, 5]


def test_frozen_bn_and_freeze_at():
    backbone = ResNetBackbone(arch="resnet50", norm="frozen_bn", freeze_at=2)
    assert isinstance(backbone.stem[1], FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert backbone.out_channels == [512, 1024, 2048]
    assert ResNetBackbone(arch="resnet18", norm="bn", freeze_at=0).out_channels == [128, 256, 512]


def test_pretrained_backbone_loads_from_a_local_file(tmp_path):
    reference = resnet18()
    torch.nn.init.normal_(reference.layer3[0].conv1.weight)
    file = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), file)
    cfg = model_config_from_dict({"backbone": {"arch": "resnet18", "norm": "frozen_bn", "pretrained": str(file)}, "fpn": {"channels": 64}, "head": {"channels": 64, "gn_groups": 16}})
    model = build_detector(cfg, num_classes=2)
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNetBackbone(arch="resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not match"):
        ResNetBackbone(arch="resnet50", pretrained=str(file))


def test_r50_matches_the_paper_layout():
    model = build_detector(load_model_config("ota_r50.yaml"), num_classes=80)
    convs = [m for m in model.head.cls_tower if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == 256 for c in convs)
    assert model.head.cls_logits.out_channels == 80 and model.head.iou_pred.out_channels == 1
    assert model.strides == (8, 16, 32, 64, 128)
    params = sum(p.numel() for p in model.parameters())
    assert 31e6 < params < 34e6  # FCOS-R50 is ~32M parameters
    assert math.isclose(model.head.scales.detach().sum().item(), 5.0)
