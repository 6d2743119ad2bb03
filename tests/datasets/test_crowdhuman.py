"""The CrowdHuman .odgt reader: on files the shapes generator wrote, and on malformed input."""

import json

import cv2
import numpy as np
import pytest

from otadet.datasets import base
from otadet.datasets.crowdhuman import CrowdHumanDetection
from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataloader, build_dataset
from otadet.datasets.transforms import build_transforms
from otadet.engine.validator import input_sizes


def _xyxy(xywh):
    a = np.array(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], 1)


def test_generated_odgt_boxes_ignores_and_sizes(shapes_formats):
    spec = load_data(shapes_formats["crowdhuman"])
    coco = json.loads(load_data(shapes_formats["coco"]).annotations("train").read_text())
    records = [json.loads(line) for line in spec.annotations("train").read_text().splitlines()]
    dataset = build_dataset(spec, "train", imgsz=128, max_size=1000, augment=False)
    assert len(dataset) == len(records) == len(coco["images"]) == 8 and dataset.names == ["person"]
    assert dataset.odgt_ids == [r["ID"] for r in records]
    num_ignored = 0
    for i, record in enumerate(records):
        assert dataset.image_size(dataset.ids[i]) == (coco["images"][i]["height"], coco["images"][i]["width"])
        entries = record["gtboxes"]
        ignored = [e["tag"] == "mask" or e["extra"]["ignore"] == 1 for e in entries]
        num_ignored += sum(ignored)
        boxes, labels, ignores = dataset.annotations(i)
        np.testing.assert_array_equal(boxes, _xyxy([e["fbox"] for e, ig in zip(entries, ignored) if not ig]))
        np.testing.assert_array_equal(ignores, _xyxy([e["fbox"] for e, ig in zip(entries, ignored) if ig]))
        assert (labels == 0).all()
        # vbox is the COCO bbox (the visible extent), fbox contains it.
        visible = _xyxy([a["bbox"] for a in coco["annotations"] if a["image_id"] == coco["images"][i]["id"]])
        np.testing.assert_array_equal(_xyxy([e["vbox"] for e in entries]), visible)
        full = _xyxy([e["fbox"] for e in entries])
        assert (full[:, :2] <= visible[:, :2]).all() and (full[:, 2:] >= visible[:, 2:]).all()
    assert num_ignored > 0, "the generated scenes have ignore regions"
    vbox = CrowdHumanDetection(images_dir=spec.images("train"), ann_file=spec.annotations("train"),
                               transform=build_transforms(False, 128, 1000), box="vbox")  # fmt: skip
    assert len(vbox._boxes) == len(dataset._boxes) and not np.array_equal(vbox._boxes, dataset._boxes)


def test_sizes_are_cached_next_to_the_annotations(shapes_formats, monkeypatch):
    spec = load_data(shapes_formats["crowdhuman"])
    build_dataset(spec, "val", imgsz=128, max_size=1000, augment=False)
    cache = spec.annotations("val").with_name("annotation_val.odgt.sizes.json")
    assert len(json.loads(cache.read_text())) == 4

    def no_header(path):
        raise AssertionError("sizes must come from the cache")

    monkeypatch.setattr(base, "read_header", no_header)
    assert len(build_dataset(spec, "val", imgsz=128, max_size=1000, augment=False)) == 4


def test_ignore_boxes_follow_resize_and_flip_through_the_loader(shapes_formats):
    spec = load_data(shapes_formats["crowdhuman"])
    loader = build_dataloader(spec, "train", imgsz=96, max_size=1000, batch=4, workers=0, shuffle=False, seed=3, augment=True)
    dataset = loader.dataset
    flips = set()
    for batch in loader:
        for k in range(len(batch.paths)):
            i = dataset.ids.index(int(batch.image_ids[k]))
            boxes, _, ignores = dataset.annotations(i)
            h, w = dataset.image_size(int(batch.image_ids[k]))
            in_h, in_w = input_sizes(batch.orig_sizes[k : k + 1], batch.scales[k : k + 1])[0].int().tolist()
            ratio = np.array([in_w / w, in_h / h] * 2, np.float32)

            def flip(b):
                return b[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([in_w, 0, in_w, 0], np.float32)

            got = batch.gt_boxes[k][batch.gt_mask[k]].numpy()
            got_ignore = batch.ignore_boxes[k][batch.ignore_mask[k]].numpy()
            flipped = not np.allclose(got, boxes * ratio, atol=1e-3)
            expect = flip(boxes * ratio) if flipped else boxes * ratio
            expect_ignore = flip(ignores * ratio) if flipped else ignores * ratio
            np.testing.assert_allclose(got, expect, atol=1e-3)
            np.testing.assert_allclose(got_ignore, expect_ignore, atol=1e-3)
            if len(ignores):
                flips.add(flipped)
    assert flips == {True, False}, "images with ignore regions came both flipped and not"


def _image(folder, name, h=40, w=60):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.full((h, w, 3), 90, np.uint8))


def test_malformed_lines_negative_boxes_and_missing_images(tmp_path, otadet_log):
    images = tmp_path / "Images"
    for name in ("a", "b", "c"):
        _image(images, f"{name}.jpg")
    good = {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 10, 20]}, {"tag": "mask", "fbox": [30, 0, 5, 5]},
                                   {"tag": "person", "fbox": [5, 5, -4, 10]}]}  # fmt: skip
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"gtboxes": []}),  # no ID
        json.dumps({"ID": "b", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3]}]}),  # 3 numbers
        json.dumps({"ID": "c", "gtboxes": [{"tag": "person", "fbox": [0, 0, 8, 8], "extra": {"ignore": 1}}]}),
        json.dumps({"ID": "gone", "gtboxes": []}),  # image missing
        json.dumps({**good, "gtboxes": []}),  # ID a again
        "",
    ]
    odgt = tmp_path / "annotation_val.odgt"
    odgt.write_text("\n".join(lines) + "\n")
    dataset = CrowdHumanDetection(images_dir=images, ann_file=odgt, transform=build_transforms(False, 40, 1000))
    assert dataset.odgt_ids == ["a", "c"]
    for number in (2, 3, 4, 7):
        assert sum(f"{odgt}:{number}:" in m for m in otadet_log) == 1, number
    missing = [m for m in otadet_log if "missing" in m]
    assert len(missing) == 1 and "1 of 3 images" in missing[0] and "gone.jpg" in missing[0]
    assert any("1 boxes of negative or zero size" in m for m in otadet_log)
    boxes, _, ignores = dataset.annotations(0)
    np.testing.assert_array_equal(boxes, [[1, 2, 11, 22]])
    np.testing.assert_array_equal(ignores, [[30, 0, 35, 5]])
    assert len(dataset.annotations(1)[0]) == 0 and len(dataset.annotations(1)[2]) == 1  # extra.ignore
    image, target = dataset[0]
    assert target["ignore_boxes"].shape == (1, 4) and target["boxes"].shape == (1, 4)
    assert dataset.gt_records([1])[0]["height"] == 40


def test_no_valid_image_left_fails(tmp_path):
    odgt = tmp_path / "annotation_val.odgt"
    odgt.write_text('{"ID": "x", "gtboxes": []}\nnot json\n')
    (tmp_path / "Images").mkdir()
    with pytest.raises(ValueError, match="no valid image left"):
        CrowdHumanDetection(images_dir=tmp_path / "Images", ann_file=odgt, transform=build_transforms(False, 40, 1000))
