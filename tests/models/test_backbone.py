"""Pretrained backbones: a local torchvision state dict, torchvision's cache (never downloaded),
the `pretrained` run key, and ImageNet weights loading into a DCN backbone."""

import pytest
import torch
from torchvision.models import resnet18

from otadet.config import ConfigError, make_args, model_config_from_dict
from otadet.models.build import with_pretrained
from otadet.models.backbone import ResNetBackbone, pretrained_file
from otadet.models.build import build_detector
from otadet.models.dcn import ModulatedDeformConv2d

SMALL = {
    "backbone": {"arch": "resnet18", "norm": "frozen_bn"},
    "fpn": {"channels": 32},
    "head": {"channels": 32, "gn_groups": 8},
}
R18_FILE = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1's URL


@pytest.fixture(scope="module")
def reference():
    """A torchvision resnet18 whose weights and BN statistics differ from any fresh init."""
    torch.manual_seed(0)
    net = resnet18()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=generator))  # running_var stays > 0
    return net


def _assert_backbone_equals(backbone: ResNetBackbone, net) -> None:
    """Every tensor of torchvision `net` but fc.* is in `backbone`, equal; stem = (conv1, bn1, relu, maxpool)."""
    state = backbone.state_dict()
    compared = 0
    for key, value in net.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        key = "stem.0." + key[6:] if key.startswith("conv1.") else "stem.1." + key[4:] if key.startswith("bn1.") else key
        assert torch.equal(state[key], value), key
        compared += 1
    assert compared == 100  # resnet18: 20 conv weights + 20 BNs x (weight, bias, mean, var)


def test_state_dict_file_loads_and_weights_match(tmp_path, reference):
    file = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), file)
    model = build_detector(model_config_from_dict(SMALL), num_classes=2, pretrained=str(file))
    _assert_backbone_equals(model.backbone, reference)
    report = model.backbone.load_report
    assert report.file == file and report.unused == ["fc.bias", "fc.weight"] and report.new == []
    # The run key overrides the model YAML's backbone.pretrained; False turns it off.
    cfg = model_config_from_dict({**SMALL, "backbone": {**SMALL["backbone"], "pretrained": str(tmp_path / "gone.pth")}})
    assert with_pretrained(cfg, str(file)).backbone.pretrained == str(file)
    assert with_pretrained(cfg, False).backbone.pretrained is None
    assert with_pretrained(cfg, None) is cfg
    with pytest.raises(FileNotFoundError, match=r"pretrained: .*gone\.pth does not exist"):
        with_pretrained(cfg, str(tmp_path / "gone.pth"))


def test_torchvision_weights_without_a_cache_fail_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / R18_FILE
    cfg = model_config_from_dict(SMALL)
    for value in ("torchvision", True):
        with pytest.raises(FileNotFoundError) as e:
            with_pretrained(cfg, value)
        message = str(e.value)
        assert f"Place {R18_FILE}" in message and str(expected) in message and "never" in message
        assert "https://download.pytorch.org/models/" + R18_FILE in message
    assert not (tmp_path / "torch").exists()  # nothing was fetched or created
    with pytest.raises(ValueError, match="no 'IMAGENET1K_V2'; choose one of IMAGENET1K_V1"):
        with_pretrained(cfg, "torchvision:IMAGENET1K_V2")
    with pytest.raises(ValueError, match="no ImageNet weights for resnet10"):
        pretrained_file("resnet10", "torchvision")


def test_torchvision_weights_load_from_the_cache(tmp_path, monkeypatch, reference):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / R18_FILE
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    assert pretrained_file("resnet18", "torchvision") == cached
    model = build_detector(model_config_from_dict(SMALL), num_classes=2, pretrained="torchvision")
    _assert_backbone_equals(model.backbone, reference)
    assert model.backbone.load_report.file == cached


def test_imagenet_weights_load_into_a_dcn_backbone(tmp_path, reference):
    file = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), file)
    backbone = ResNetBackbone(arch="resnet18", norm="frozen_bn", pretrained=str(file), dcn_stages=[3, 4, 5])
    for stage in ("layer2", "layer3", "layer4"):
        for block, ref_block in zip(getattr(backbone, stage), getattr(reference, stage)):
            assert isinstance(block.conv2, ModulatedDeformConv2d)
            assert torch.equal(block.conv2.weight, ref_block.conv2.weight)  # same key, same shape
            assert block.conv2.offset_mask.weight.abs().sum() == 0
    report = backbone.load_report
    # 3 stages x 2 blocks x (weight, bias) of the offset/mask conv
    assert len(report.new) == 3 * 2 * 2 and all(".conv2.offset_mask." in k for k in report.new)


def test_pretrained_run_key_types():
    assert make_args({"pretrained": "torchvision"}).pretrained == "torchvision"
    assert make_args({"pretrained": False}).pretrained is False
    assert make_args({}).pretrained is None
    with pytest.raises(ConfigError, match="'pretrained' must be str or bool"):
        make_args({"pretrained": 3})


def test_a_checkpoint_loads_without_the_imagenet_file(tmp_path, reference):
    # The checkpoint holds every weight: the YAML's backbone.pretrained is not read again.
    from otadet.engine.model import Detector
    from otadet.utils.checkpoint import save_checkpoint

    file = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), file)
    cfg = model_config_from_dict({**SMALL, "backbone": {**SMALL["backbone"], "pretrained": str(file)}})
    net = build_detector(cfg, num_classes=2)
    save_checkpoint({"model_cfg": cfg.to_dict(), "names": ["a", "b"], "model": net.state_dict()}, tmp_path / "best.pt")
    file.unlink()
    loaded = Detector(tmp_path / "best.pt", verbose=False).net
    assert loaded.backbone.load_report is None
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
