"""The YOLO txt reader: on labels the shapes generator wrote, and on malformed label files."""

import json

import cv2
import numpy as np
import pytest

from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataset
from otadet.datasets.transforms import build_transforms
from otadet.datasets.yolo import YoloDetection, labels_dir_for


def test_generated_labels_give_the_coco_boxes(shapes_formats):
    spec = load_data(shapes_formats["yolo"])
    assert spec.names == ["circle", "rectangle", "triangle", "cross"]  # from a names dict
    coco = json.loads(load_data(shapes_formats["coco"]).annotations("val").read_text())
    dataset = build_dataset(spec, "val", imgsz=128, max_size=1000, augment=False)
    assert len(dataset) == len(coco["images"]) == 4
    for i, image in enumerate(sorted(coco["images"], key=lambda m: m["file_name"])):
        assert dataset.image_path(i).name == image["file_name"]
        assert dataset.image_size(dataset.ids[i]) == (image["height"], image["width"])
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        boxes, labels, ignores = dataset.annotations(i)
        np.testing.assert_allclose(boxes, expected, atol=2e-3)  # labels keep 6 decimals of the normalised values
        assert labels.tolist() == [a["category_id"] - 1 for a in anns] and len(ignores) == 0


def test_labels_dir_convention(tmp_path):
    assert labels_dir_for(tmp_path / "images" / "train") == tmp_path / "labels" / "train"
    assert labels_dir_for(tmp_path / "images" / "x" / "images" / "val") == tmp_path / "images" / "x" / "labels" / "val"
    with pytest.raises(ValueError, match="under an 'images' folder"):
        labels_dir_for(tmp_path / "pictures")


def test_malformed_labels_unknown_classes_and_background(tmp_path, otadet_log):
    images, labels = tmp_path / "images" / "val", tmp_path / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in ("a", "b", "c"):
        cv2.imwrite(str(images / f"{name}.jpg"), np.full((50, 100, 3), 90, np.uint8))
    (images / "notes.txt").write_text("not an image")
    (labels / "a.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n"  # kept: 40x20 px box at the centre
        "0 0.5 0.5 0.2\n"  # 4 columns
        "0 0.1 0.1 0.1 0.1 0.9\n"  # 6 columns
        "7 0.5 0.5 0.1 0.1\n"  # class 7 of 2
        "x 0.5 0.5 0.1 0.1\n"  # not a number
        "0 0.5 0.5 -0.1 0.1\n"  # negative width
        "\n"
        "0 0.95 0.5 0.2 0.2\n"  # sticks out on the right: clipped
    )
    (labels / "b.txt").write_text("")  # background
    dataset = YoloDetection(images_dir=images, transform=build_transforms(False, 50, 1000), names=["p", "q"])
    assert len(dataset) == 3 and dataset.num_background == 2 and dataset.num_malformed == 3  # c has no label file
    for number in (2, 3, 5):
        assert sum(f"a.txt:{number}:" in m for m in otadet_log) == 1, number
    assert sum("class id outside 0..1" in m for m in otadet_log) == 1
    assert any("1 boxes of negative or zero size" in m and "1 boxes clipped" in m for m in otadet_log)
    boxes, classes, _ = dataset.annotations(0)
    np.testing.assert_allclose(boxes, [[40, 15, 60, 35], [85, 20, 100, 30]])
    assert classes.tolist() == [1, 0]
    _, target = dataset[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
