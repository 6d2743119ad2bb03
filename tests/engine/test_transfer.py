"""Fine-tuning across class sets: every tensor whose name and shape match is copied, the class
layer restarts at the focal prior where the classes differ, rows of shared class names are kept,
and both `Detector(ckpt).train(data=other)` and `pretrained=ckpt` do it (and say so)."""

import json
import logging
import math

import pytest
import torch

from otadet import Detector
from otadet.config import load_model_config
from otadet.engine.transfer import CLASS_LAYER, read_detector_checkpoint, transfer_weights
from otadet.models.build import build_detector
from otadet.utils.checkpoint import save_checkpoint

from tiny_run import TINY_RUN, perturbed_tiny

SHAPES = ["circle", "rectangle", "triangle", "cross"]
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


@pytest.fixture
def log_lines(caplog):
    logger = logging.getLogger("otadet")
    logger.propagate = True  # the package logger does not propagate; caplog listens at the root
    caplog.set_level(logging.INFO, logger="otadet")
    yield lambda: [r.getMessage() for r in caplog.records]
    logger.propagate = False


def _fresh(num_classes: int):
    torch.manual_seed(5)
    return build_detector(load_model_config("ota_tiny"), num_classes)


def test_other_classes_keep_everything_but_the_class_layer(log_lines):
    source = perturbed_tiny(4).state_dict()
    net = _fresh(2)
    report = transfer_weights(net, source, src_names=SHAPES, dst_names=["triangle", "polygon"])
    got = net.state_dict()
    assert report.total == len(got) and report.transferred == len(got) - 2
    assert report.reinitialised == [f"{CLASS_LAYER}.weight", f"{CLASS_LAYER}.bias"]
    assert report.kept_rows == ["triangle"]
    for key, value in got.items():
        if not key.startswith(CLASS_LAYER):
            assert torch.equal(value, source[key]), key
    weight, bias = got[f"{CLASS_LAYER}.weight"], got[f"{CLASS_LAYER}.bias"]
    assert torch.equal(weight[0], source[f"{CLASS_LAYER}.weight"][2])  # triangle is row 2 of the source
    assert bias[0].item() == source[f"{CLASS_LAYER}.bias"][2].item()
    assert bias[1].item() == pytest.approx(PRIOR_BIAS)  # polygon: the focal prior
    assert weight[1].std().item() == pytest.approx(0.01, rel=0.2)  # its fresh N(0, 0.01) init
    line = log_lines()[-1]
    assert line.startswith(f"transferred {len(got) - 2}/{len(got)} tensors; re-initialised: head.cls_logits.weight, head.cls_logits.bias")
    assert "kept the class rows of 1 classes whose names match: triangle" in line


def test_same_shape_other_names_is_not_copied_and_rows_can_be_dropped():
    source = perturbed_tiny(4).state_dict()
    net = _fresh(4)
    other = ["a", "b", "triangle", "c"]
    report = transfer_weights(net, source, src_names=SHAPES, dst_names=other, keep_class_rows=False, log=False)
    assert report.kept_rows == [] and len(report.reinitialised) == 2
    assert torch.allclose(net.state_dict()[f"{CLASS_LAYER}.bias"], torch.full((4,), PRIOR_BIAS))
    same = transfer_weights(_fresh(4), source, src_names=SHAPES, dst_names=SHAPES, log=False)
    assert same.transferred == same.total and same.reinitialised == []


def test_other_architecture_keeps_only_matching_shapes():
    source = perturbed_tiny(4).state_dict()
    cfg = load_model_config("ota_tiny")
    wider = build_detector(cfg.__class__(**{**cfg.__dict__, "fpn": cfg.fpn.__class__(channels=32),
                                            "head": cfg.head.__class__(**{**cfg.head.__dict__, "channels": 32})}), 4)  # fmt: skip
    report = transfer_weights(wider, source, src_names=SHAPES, dst_names=SHAPES, log=False)
    keys = list(wider.state_dict())
    backbone = [k for k in keys if k.startswith("backbone.")]
    # Shapes that do not depend on the width: a scale per level, a bias per output of the last convs.
    same = ["head.scales", "head.cls_logits.bias", "head.bbox_pred.bias", "head.iou_pred.bias"]
    narrower = [k for k in keys if k.startswith(("fpn.", "head.")) and k not in same]  # 32 channels, not 64
    assert report.transferred == len(backbone) + len(same)
    assert sorted(report.reinitialised) == sorted(narrower)


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory, train_data):
    """The tiny shapes split relabelled into [triangle, polygon]: every object keeps a box."""
    from otadet.datasets.data_yaml import load_data

    spec = load_data(train_data)  # generates the images
    root = tmp_path_factory.mktemp("two-class")
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        ann = json.loads((spec.root / "annotations" / f"{split}.json").read_text())
        triangle = next(c["id"] for c in ann["categories"] if c["name"] == "triangle")
        for a in ann["annotations"]:
            a["category_id"] = 1 if a["category_id"] == triangle else 2
        ann["categories"] = [{"id": 1, "name": "triangle"}, {"id": 2, "name": "polygon"}]
        (root / "annotations" / f"{split}.json").write_text(json.dumps(ann))
    data = {
        "format": "coco", "path": str(spec.root), "train": "images/train", "val": "images/val",
        "train_annotations": str(root / "annotations/train.json"), "val_annotations": str(root / "annotations/val.json"),
    }  # fmt: skip
    file = root / "two.yaml"
    file.write_text(json.dumps(data))
    return file


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    net = perturbed_tiny(4)
    cfg = load_model_config("ota_tiny")
    path = tmp_path_factory.mktemp("ckpt") / "shapes4.pt"
    save_checkpoint({"model_cfg": cfg.to_dict(), "names": SHAPES, "model": net.state_dict(), "train_args": {}}, path)
    return path, net.state_dict()


def _frozen_run(tmp_path, data) -> dict:
    """One iteration at lr 0: the weights after training are the ones training started from."""
    return dict(TINY_RUN, data=str(data), iters=1, lr0=0.0, val=False, project=str(tmp_path), name="ft")


@pytest.mark.parametrize("route", ["checkpoint", "pretrained"])
def test_fine_tune_other_classes(route, tmp_path, two_class_data, shapes_checkpoint, log_lines):
    path, source = shapes_checkpoint
    if route == "checkpoint":
        detector = Detector(str(path), verbose=False)
        detector.train(**_frozen_run(tmp_path, two_class_data))
    else:
        assert read_detector_checkpoint(str(path)) is not None and read_detector_checkpoint("torchvision") is None
        detector = Detector("ota_tiny.yaml", verbose=False)
        detector.train(pretrained=str(path), **_frozen_run(tmp_path, two_class_data))
    assert detector.names == ["triangle", "polygon"]
    got = detector.net.state_dict()
    for key in ("backbone.stem.0.weight", "fpn.layer_blocks.0.0.weight", "head.reg_tower.0.weight", "head.iou_pred.bias"):
        assert torch.equal(got[key], source[key]), key
    assert torch.equal(got[f"{CLASS_LAYER}.weight"][0], source[f"{CLASS_LAYER}.weight"][2])
    assert got[f"{CLASS_LAYER}.bias"][1].item() == pytest.approx(PRIOR_BIAS)
    lines = [line for line in log_lines() if line.startswith("transferred ")]
    assert len(lines) == 1 and "class rows of 1 classes whose names match: triangle" in lines[0], lines
