"""The assignment visualiser: the positives it draws are the assigner's own output, pixel for pixel,
four assigners sit side by side, and `otadet assign` runs end to end on a tiny generated image."""

import cv2
import numpy as np
import pytest
import torch

from otadet.assign import ASSIGNERS
from otadet.cli import main
from otadet.config import load_model_config
from otadet.engine.assign_inputs import LabelledImage
from otadet.engine.assign_plot import GAP, _factor, gt_colours, markers, pick_strides, plot_assignment, plot_assignments
from otadet.engine.assign_vis import _preprocess, assign_image

from tiny_run import perturbed_tiny

BOXES = np.array([[6, 6, 40, 44], [30, 20, 62, 60], [70, 8, 120, 40]], np.float32)  # two overlap


def _image(h=64, w=128) -> np.ndarray:
    image = np.full((h, w, 3), 90, np.uint8)
    for x1, y1, x2, y2 in BOXES.astype(int):
        cv2.rectangle(image, (x1, y1), (x2, y2), (40, 160, 200), -1)
    return image


@pytest.fixture(scope="module")
def assignments():
    item = LabelledImage("scene.png", _image(), BOXES, np.array([0, 1, 2]), np.zeros((0, 4), np.float32), ["a", "b", "c"])
    net, cfg = perturbed_tiny(3), load_model_config("ota_tiny")
    found = assign_image(net, cfg, item, assigners=list(ASSIGNERS), imgsz=64, max_size=128, device=torch.device("cpu"),
                         names=item.names, model="test net", trained=True)  # fmt: skip
    return net, item, found


def test_assignments_equal_the_assigners_output(assignments):
    net, item, found = assignments
    batch, _, _ = _preprocess(item, 64, 128)
    with torch.no_grad():
        out = net.eval()(batch.images)
    for a in found:
        result = ASSIGNERS[a.assigner](out.points, out.strides, out.cls_logits, out.boxes, batch.gt_boxes, batch.gt_labels, batch.gt_mask)
        assert torch.equal(a.matched, result.matched[0]), a.assigner
        assert a.num_positives.tolist() == [int((result.matched[0] == g).sum()) for g in range(3)]
        assert a.stats["num_pos"] == int((result.matched >= 0).sum()) > 0
        assert int(a.ambiguous.sum()) == int(result.stats["num_ambiguous"])
        assert a.stats["min_pos_per_gt"] == min(a.num_positives.tolist())


def test_drawn_dots_are_exactly_the_positives(assignments):
    _, _, found = assignments
    for a in found:
        strides = pick_strides([a], "all")
        drawn = markers(a, strides)
        assert sorted((m.x, m.y, m.gt) for m in drawn if m.gt >= 0) == sorted(
            (*a.points[i].tolist(), int(a.matched[i])) for i in (a.matched >= 0).nonzero().flatten().tolist()
        )
        canvas, f = plot_assignment(a, strides), _factor(a.image)
        top = 4 * 17 + 8
        colours = gt_colours(3)
        for m in drawn:
            pixel = tuple(int(v) for v in canvas[top + int(round(m.y * f)), int(round(m.x * f))])
            if m.gt >= 0:
                assert pixel == colours[m.gt], (a.assigner, m)


def test_all_puts_four_equal_panels_side_by_side(assignments):
    _, _, found = assignments
    one = plot_assignment(found[0], pick_strides(found, "best"))
    four = plot_assignments(found, "best")
    assert four.shape == (one.shape[0], 4 * one.shape[1] + 3 * GAP, 3)
    with pytest.raises(ValueError, match="level="):
        pick_strides(found, "P9")


def test_cli_end_to_end_with_yolo_labels(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "img.png"), _image())
    h, w = 64, 128
    lines = [f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}" for c, (x1, y1, x2, y2) in enumerate(BOXES)]
    (tmp_path / "img.txt").write_text("\n".join(lines) + "\n")
    common = [f"source={tmp_path / 'img.png'}", f"labels={tmp_path / 'img.txt'}", "imgsz=64", "max_size=128", "device=cpu",
              f"project={tmp_path / 'runs'}", "model=ota_tiny.yaml"]  # fmt: skip
    assert main(["assign", "assigner=all", *common]) == 0
    picture = cv2.imread(str(tmp_path / "runs/assign/exp/img_all.png"))
    assert main(["assign", "assigner=ota", "exist_ok=true", *common]) == 0
    single = cv2.imread(str(tmp_path / "runs/assign/exp/img_ota.png"))
    assert picture.shape == (single.shape[0], 4 * single.shape[1] + 3 * GAP, 3)
    assert single.shape[1] == 128 * _factor(np.zeros((64, 128, 3)))  # the input enlarged to >= 480 px
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.2\n")
    assert main(["assign", f"source={tmp_path / 'img.png'}", f"labels={tmp_path / 'bad.txt'}", "device=cpu"]) == 2
    assert "bad.txt:1: expected 'cls xc yc w h'" in capsys.readouterr().err
