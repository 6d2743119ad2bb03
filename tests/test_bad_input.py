"""Bad-input corpus (issue 15): each hostile input ends in a clear error naming the file/key,
a warning with a correct skip, or the correct result — never a traceback, hang or silent change.
File-system cases run under a timeout (SIGALRM) so a hang fails instead of blocking the suite."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from otadet.cli import main, parse_overrides
from otadet.config import ConfigError, make_args
from otadet.datasets.coco import CocoDetection
from otadet.datasets.image_io import apply_orientation, image_problem, load_image, read_header, set_max_pixels
from otadet.datasets.transforms import build_transforms
from otadet.engine.sources import read_frames, resolve_sources
from otadet.utils.checkpoint import save_checkpoint


# ------------------------------------------------------------------ CLI values
@pytest.mark.parametrize("token, value", [("lr0=1e-4", 1e-4), ("lr0=5E-3", 5e-3), ("lr0=1.5e2", 150.0), ("name=1e", "1e")])
def test_numbers_parse_the_usual_way(token, value):
    assert parse_overrides([token])[token.split("=")[0]] == value


@pytest.mark.parametrize("key, value, interval", [
    ("batch", 0, "[1, inf)"), ("conf", 2.0, "[0, 1]"), ("imgsz", -1, "[32, inf)"), ("workers", -3, "[0, inf)"),
    ("epochs", 0, "[1, inf)"), ("lr0", float("nan"), "[0, inf)"), ("imgsz", [640, "a"], "[32, inf)"),
])  # fmt: skip
def test_out_of_range_values_name_key_and_range(key, value, interval):
    with pytest.raises(ConfigError) as e:
        make_args({key: value})
    assert key in str(e.value) and interval in str(e.value)


@pytest.mark.parametrize("argv, code, text", [
    (["train", "batch=0", "data=nope.yaml"], 2, "batch=0 is out of range"),
    (["predict", "model=ota_tiny.yaml", "source=-1"], 2, "webcam index"),
])  # fmt: skip
def test_cli_answers_in_one_line(argv, code, text, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("otadet: error:")]
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in err


def test_cli_unexpected_error_is_one_line_unless_debug(capsys, monkeypatch):
    import otadet.cli as cli

    monkeypatch.setattr(cli, "run", lambda argv: {}[99])
    assert main(["val"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "KeyError: 99" in err and "OTADET_DEBUG=1" in err
    monkeypatch.setenv("OTADET_DEBUG", "1")
    assert main(["val"]) == 1
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------ image files
def _jpeg(path, h=40, w=60):
    image = np.zeros((h, w, 3), np.uint8)
    image[:10, :20] = 255  # a white block top-left: where it lands shows the orientation
    cv2.imwrite(str(path), image)
    return path


def test_fifo_named_jpg_is_skipped_not_read(tmp_path, hang_guard, log_messages):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert load_image(fifo)[0] is None and "not a regular file" in image_problem(fifo, None)
    with pytest.raises(ValueError, match="not a regular file"):
        resolve_sources(str(fifo))


def test_truncated_jpeg_is_skipped_with_a_warning(tmp_path, hang_guard, log_messages):
    good = _jpeg(tmp_path / "good.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    frames = list(read_frames(resolve_sources([str(cut), str(good)])))
    assert [f.source.path for f in frames] == [str(good)]
    assert any("cut.jpg" in m and "truncated" in m for m in log_messages)


def test_pixel_limit_skips_before_decoding(tmp_path, hang_guard):
    big = _jpeg(tmp_path / "big.jpg", 200, 300)
    set_max_pixels(200 * 300 - 1)
    try:
        image, problem, _ = load_image(big)
        assert image is None and "max_pixels" in problem and "300x200" in problem
    finally:
        set_max_pixels(400_000_000)
    assert load_image(big)[0].shape == (200, 300, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    from PIL import Image, ImageOps

    path = tmp_path / f"o{orientation}.jpg"
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)))[:, :, ::-1]  # PIL's displayed frame, BGR
    displayed = load_image(path)[0]
    assert displayed.shape == reference.shape and np.abs(displayed.astype(int) - reference).max() <= 2
    stored = load_image(path, exif=False)[0]
    assert stored.shape == (40, 60, 3) and np.array_equal(apply_orientation(displayed, orientation, inverse=True), stored)
    assert read_header(path).orientation == orientation


# ------------------------------------------------------------------ COCO json
def _coco(tmp_path, annotations, images=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((50, 80, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "images" / "b.png"), np.zeros((50, 80, 3), np.uint8))
    images = images or [{"id": 1, "file_name": "a.png", "width": 80, "height": 50},
                        {"id": 2, "file_name": "b.png", "width": 80, "height": 50}]  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return CocoDetection(images_dir=tmp_path / "images", ann_file=ann, transform=build_transforms(False, 50, 1000))


def test_coco_ids_restarting_per_image_keep_every_box(tmp_path, log_messages):
    anns = [{"id": k % 3 + 1, "image_id": 1 + k // 6, "category_id": 1, "bbox": [k, 1, 5, 5]} for k in range(12)]
    dataset = _coco(tmp_path, anns)
    assert len(dataset.coco.anns) == 12 and [len(dataset.annotations(i)[0]) for i in range(2)] == [6, 6]
    assert any("renumbered" in m for m in log_messages)


@pytest.mark.parametrize("images, text", [
    ([{"id": 1, "file_name": "a.png", "width": 80, "height": 50}, {"id": 1, "file_name": "b.png", "width": 80, "height": 50}],
     r"image ids \[1\] appear more than once"),
    ([{"id": "a", "file_name": "a.png", "width": 80, "height": 50}], "integers"),
])  # fmt: skip
def test_coco_bad_image_ids_are_errors_naming_the_file(tmp_path, images, text):
    with pytest.raises(ValueError, match=text) as e:
        _coco(tmp_path, [], images)
    assert "ann.json" in str(e.value)


def test_coco_val_json_is_cleaned_before_cocoeval(tmp_path, log_messages):
    from otadet.engine.validator import coco_evaluate

    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},  # no area, no iscrowd
            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]},  # unknown category
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": ["a", 0, 5, 5]}]  # fmt: skip
    dataset = _coco(tmp_path, anns)
    det = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]
    metrics = coco_evaluate(dataset.coco_gt(), det, image_ids=[1, 2], verbose=False)
    assert metrics["AP"] == pytest.approx(1.0)  # the one valid gt, found exactly
    assert any("2 annotations skipped" in m and "99" in m for m in log_messages)


# ------------------------------------------------------------------ checkpoints and runs
def test_disk_full_names_the_file_and_free_space(tmp_path, monkeypatch):
    save_checkpoint({"x": torch.zeros(1)}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unexpected pos 128")))
    with pytest.raises(OSError, match=r"last.pt .*GiB free") as e:
        save_checkpoint({"x": torch.ones(1)}, tmp_path / "last.pt")
    assert "intact" in str(e.value)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["x"].item() == 0  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_exist_ok_never_overwrites_another_runs_weights(tmp_path):
    from otadet.engine.trainer import _run_dir

    run = tmp_path / "train" / "exp"
    (run / "weights").mkdir(parents=True)
    args = make_args({"project": str(tmp_path), "exist_ok": True})
    assert _run_dir(args) == run  # an empty folder is reused
    (run / "weights" / "best.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds another run's weights .*resume="):
        _run_dir(args)


def test_non_finite_weights_after_the_step_stop_the_run():
    from otadet.engine.trainer import _check_finite_weights

    net = torch.nn.Linear(2, 2)
    _check_finite_weights(net, 3)
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="iteration 3.*last good checkpoint"):
        _check_finite_weights(net, 3)
