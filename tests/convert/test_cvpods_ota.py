"""The official OTA (cvpods) checkpoint layout -> otadet, against an independent reference forward.

A synthetic checkpoint with the released model's key names and shapes (ResNet-50 MSRA,
FPN P3-P7 from P5, the OTA head) is converted; the reference below recomputes the dense scores
and boxes from the same tensors with plain F.conv2d / F.group_norm and cvpods' conventions (BGR
caffe input, stride in the 1x1 conv, shifts at the cell corner, relu(scale * x) * stride,
box = shift -+ ltrb, score sqrt(sigmoid(cls) * sigmoid(iou))). A file that needs pickle fails
saying so and loads with allow_pickle=True."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otadet import Detector
from otadet.convert import convert, save_converted
from otadet.datasets.transforms import to_tensor_normalized

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # ResNet-50
STRIDES = (8, 16, 32, 64, 128)
MEAN_BGR = torch.tensor([103.53, 116.28, 123.675])


def _official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released checkpoint's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k, bias=False, std=None):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (std or math.sqrt(1.0 / (cin * k * k)))
        if bias:
            state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05

    def norm(name, c):
        state[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5

    conv("backbone.bottom_up.stem.conv1", 64, 3, 7, std=0.01)
    norm("backbone.bottom_up.stem.conv1.norm", 64)
    cin = 64
    for stage, count in BLOCKS.items():
        mid, out = 64 * 2 ** (stage - 2), 256 * 2 ** (stage - 2)
        for i in range(count):
            prefix = f"backbone.bottom_up.res{stage}.{i}"
            if i == 0:
                conv(f"{prefix}.shortcut", out, cin, 1)
                norm(f"{prefix}.shortcut.norm", out)
            for name, (co, ci, k) in {"conv1": (mid, cin if i == 0 else out, 1), "conv2": (mid, mid, 3), "conv3": (out, mid, 1)}.items():
                conv(f"{prefix}.{name}", co, ci, k)
                norm(f"{prefix}.{name}.norm", co)
        cin = out
    for level, c in zip((3, 4, 5), (512, 1024, 2048)):
        conv(f"backbone.fpn_lateral{level}", 256, c, 1, bias=True)
        conv(f"backbone.fpn_output{level}", 256, 256, 3, bias=True)
    conv("backbone.top_block.p6", 256, 256, 3, bias=True)
    conv("backbone.top_block.p7", 256, 256, 3, bias=True)
    for tower in ("cls_subnet", "bbox_subnet"):
        for i in range(4):
            conv(f"head.{tower}.{3 * i}", 256, 256, 3, bias=True, std=0.02)
            state[f"head.{tower}.{3 * i + 1}.weight"] = torch.rand(256, generator=g) + 0.5
            state[f"head.{tower}.{3 * i + 1}.bias"] = torch.randn(256, generator=g) * 0.1
    conv("head.cls_score", 80, 256, 3, bias=True, std=0.01)
    conv("head.bbox_pred", 4, 256, 3, bias=True, std=0.01)
    conv("head.ious_pred", 1, 256, 3, bias=True, std=0.01)
    state["head.cls_score.bias"] -= 2.0
    state["head.bbox_pred.bias"] += 1.5
    for i in range(5):
        state[f"head.scales.{i}.scale"] = torch.rand(1, generator=g) * 0.4 + 0.8
    return state


def _bn(x, s, name):
    scale = s[f"{name}.weight"] * (s[f"{name}.running_var"] + 1e-5).rsqrt()
    return x * scale[None, :, None, None] + (s[f"{name}.bias"] - s[f"{name}.running_mean"] * scale)[None, :, None, None]


def _conv_bn(x, s, name, stride=1, padding=0):
    return _bn(F.conv2d(x, s[f"{name}.weight"], stride=stride, padding=padding), s, f"{name}.norm")


def _reference(s: dict, image_bgr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """cvpods' forward and decoding from the raw tensors -> (scores (A, 80), boxes (A, 4))."""
    x = (torch.from_numpy(image_bgr).permute(2, 0, 1).float() - MEAN_BGR[:, None, None])[None]  # caffe: BGR - mean, std 1
    x = F.relu(_conv_bn(x, s, "backbone.bottom_up.stem.conv1", stride=2, padding=3))
    x = F.max_pool2d(x, 3, 2, 1)
    c = {}
    for stage, count in BLOCKS.items():
        for i in range(count):
            p = f"backbone.bottom_up.res{stage}.{i}"
            stride = 2 if i == 0 and stage > 2 else 1
            out = F.relu(_conv_bn(x, s, f"{p}.conv1", stride=stride))  # MSRA: the stride is in the 1x1
            out = F.relu(_conv_bn(out, s, f"{p}.conv2", padding=1))
            out = _conv_bn(out, s, f"{p}.conv3")
            short = _conv_bn(x, s, f"{p}.shortcut", stride=stride) if i == 0 else x
            x = F.relu(out + short)
        c[stage] = x
    lateral = {k: F.conv2d(c[k], s[f"backbone.fpn_lateral{k}.weight"], s[f"backbone.fpn_lateral{k}.bias"]) for k in (3, 4, 5)}
    top = {5: lateral[5]}
    top[4] = lateral[4] + F.interpolate(top[5], scale_factor=2, mode="nearest")
    top[3] = lateral[3] + F.interpolate(top[4], scale_factor=2, mode="nearest")
    p = [F.conv2d(top[k], s[f"backbone.fpn_output{k}.weight"], s[f"backbone.fpn_output{k}.bias"], padding=1) for k in (3, 4, 5)]
    p6 = F.conv2d(p[2], s["backbone.top_block.p6.weight"], s["backbone.top_block.p6.bias"], stride=2, padding=1)
    p7 = F.conv2d(F.relu(p6), s["backbone.top_block.p7.weight"], s["backbone.top_block.p7.bias"], stride=2, padding=1)
    scores, boxes = [], []
    for level, (feature, stride) in enumerate(zip([*p, p6, p7], STRIDES)):
        towers = {}
        for tower in ("cls_subnet", "bbox_subnet"):
            t = feature
            for i in range(4):
                t = F.conv2d(t, s[f"head.{tower}.{3 * i}.weight"], s[f"head.{tower}.{3 * i}.bias"], padding=1)
                t = F.relu(F.group_norm(t, 32, s[f"head.{tower}.{3 * i + 1}.weight"], s[f"head.{tower}.{3 * i + 1}.bias"]))
            towers[tower] = t
        cls = F.conv2d(towers["cls_subnet"], s["head.cls_score.weight"], s["head.cls_score.bias"], padding=1)
        iou = F.conv2d(towers["bbox_subnet"], s["head.ious_pred.weight"], s["head.ious_pred.bias"], padding=1)
        reg = F.conv2d(towers["bbox_subnet"], s["head.bbox_pred.weight"], s["head.bbox_pred.bias"], padding=1)
        ltrb = F.relu(reg * s[f"head.scales.{level}.scale"]) * stride  # NORM_REG_TARGETS
        h, w = feature.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")  # SHIFT_GENERATOR.OFFSET 0
        shifts = torch.stack((xs.flatten(), ys.flatten()), 1).float()  # (HW, 2)
        ltrb = ltrb[0].flatten(1).T  # (HW, 4)
        boxes.append(torch.cat((shifts - ltrb[:, :2], shifts + ltrb[:, 2:]), 1))
        scores.append(torch.sqrt(cls[0].flatten(1).T.sigmoid() * iou[0].flatten(1).T.sigmoid()))
    return torch.cat(scores), torch.cat(boxes)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    state = _official_state()
    path = tmp_path_factory.mktemp("ota") / "ota_r50_1x.pth"
    torch.save({"model": state, "iteration": 90000}, path)  # cvpods' checkpointer layout
    return path, state


def test_converted_official_model_matches_reference(official_file, tmp_path):
    path, state = official_file
    file = save_converted(convert(path), tmp_path / "ota_r50_1x.pt")
    detector = Detector(str(file), verbose=False)
    assert detector.cfg.backbone.stride_in_1x1 and detector.cfg.input.channel_order == "bgr" and len(detector.names) == 80
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # BGR, as cv2 reads it
    with torch.no_grad():
        ref_scores, ref_boxes = _reference(state, image)
        out = detector.net.eval()(to_tensor_normalized(image)[None])  # otadet's RGB ImageNet pipeline input
    scores = torch.sqrt(out.cls_logits[0].sigmoid() * out.iou_logits[0, :, None].sigmoid())
    assert scores.shape == ref_scores.shape and ref_scores.std() > 1e-3
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.boxes[0], ref_boxes, atol=1e-3, rtol=1e-4)
    assert (ref_boxes[:, 2:] - ref_boxes[:, :2]).min() > 0


class _Meta:  # anything beyond tensors and plain containers needs pickle
    pass


def test_pickled_file_fails_clearly_and_loads_when_allowed(official_file, tmp_path):
    _, state = official_file
    path = tmp_path / "pickled.pth"
    torch.save({"model": state, "meta": _Meta()}, path)
    with pytest.raises(ValueError) as info:
        convert(path)
    message = str(info.value)
    assert "weights_only=True" in message and "allow_pickle=true" in message and str(path) in message
    assert convert(path, allow_pickle=True)["names"][0] == "person"


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7), "head.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="head.extra.weight"):
        convert(path)


def test_cli_convert_writes_a_checkpoint_that_predicts(official_file, tmp_path, monkeypatch, capsys):
    from otadet.cli import main

    path, _ = official_file
    monkeypatch.chdir(tmp_path)
    assert main(["convert", f"source={path}"]) == 0
    written = tmp_path / "weights" / "ota_r50_1x.pt"  # the default out: weights/<stem>.pt
    assert capsys.readouterr().out.strip().endswith(str(Path("weights") / "ota_r50_1x.pt")) and written.is_file()
    detector = Detector(str(written), verbose=False)
    assert detector.cfg.backbone.stride_in_1x1 and len(detector.names) == 80 and detector.names[0] == "person"
    assert main(["convert", f"source={tmp_path / 'missing.pth'}"]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert err.count("otadet: error:") == 1 and "missing.pth" in err and "Traceback" not in err
