"""The COCO-json reader against a hand-written json with hand-computed boxes after resizing."""

import json

import cv2
import numpy as np
import pytest
import torch

from otadet.datasets.coco import CocoDetection
from otadet.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def _write_dataset(root, annotations, categories=None):
    images_dir = root / "images"
    images_dir.mkdir()
    a = np.zeros((100, 200, 3), np.uint8)
    a[:] = (0, 0, 255)  # BGR red everywhere
    cv2.imwrite(str(images_dir / "a.png"), a)
    cv2.imwrite(str(images_dir / "b.png"), np.full((80, 120, 3), 128, np.uint8))
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 120, "height": 80},  # no objects
            {"id": 5, "file_name": "c.png", "width": 64, "height": 64},  # file missing
        ],
        "annotations": annotations,
        "categories": categories or [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return images_dir, root / "ann.json"


ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 40, 30], "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 30, 0, 10], "iscrowd": 0},  # zero width: dropped
    {"id": 3, "image_id": 1, "category_id": 3, "bbox": [180, 80, 50, 50], "iscrowd": 0},  # clipped to 200x100
    {"id": 4, "image_id": 1, "category_id": 3, "bbox": [250, 10, 20, 20], "iscrowd": 0},  # outside: dropped
    {"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: an ignore region
    {"id": 6, "image_id": 1, "category_id": 3, "bbox": [60, 10, 20, 30], "iscrowd": 0},
    {"id": 7, "image_id": 5, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},  # image file missing
]


@pytest.fixture
def dataset(tmp_path, otadet_log):
    images_dir, ann_file = _write_dataset(tmp_path, ANNOTATIONS)
    # Resize shorter side to 50: image a (100x200) by 0.5, image b (80x120) by 0.625.
    return CocoDetection(images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000))


def test_category_mapping_and_counts(dataset, otadet_log):
    assert dataset.cat_ids == [3, 7] and dataset.names == ["cat", "dog"]
    assert dataset.ids == [1, 2] and len(dataset) == 2 and dataset.num_missing == 1  # c.png is missing
    assert (dataset.num_clipped, dataset.num_dropped, dataset.num_crowd) == (1, 2, 1)
    missing = [m for m in otadet_log if "missing" in m]
    assert len(missing) == 1 and "1 of 3 images" in missing[0] and "c.png" in missing[0]
    summary = [m for m in otadet_log if "ann.json" in m and "clipped" in m]
    assert len(summary) == 1
    assert "1 boxes clipped" in summary[0] and "2 empty or outside boxes dropped" in summary[0]
    assert "1 crowd boxes kept as ignore regions" in summary[0]
    assert dataset.coco.getImgIds() == [1, 2, 5]


def test_boxes_after_resize(dataset):
    image, target = dataset[0]
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32
    expected = [[5, 10, 25, 25], [90, 40, 100, 50], [30, 5, 40, 20]]  # (ann 1, 3, 6) * 0.5
    np.testing.assert_allclose(target["boxes"].numpy(), expected)
    assert target["labels"].tolist() == [1, 0, 0]  # COCO 7 -> 1, COCO 3 -> 0
    np.testing.assert_allclose(target["ignore_boxes"].numpy(), [[0, 0, 25, 25]])  # the crowd box * 0.5
    assert target["image_id"] == 1 and target["orig_size"] == (100, 200) and target["scale"] == 0.5
    assert target["path"].endswith("a.png")
    # Red BGR pixels arrive as RGB, normalised with the ImageNet statistics.
    red = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1], -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    np.testing.assert_allclose(image[:, 25, 50].numpy(), red, rtol=1e-5)


def test_image_without_objects(dataset):
    image, target = dataset[1]
    assert image.shape == (3, 50, 75) and target["scale"] == 0.625
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["ignore_boxes"].shape == (0, 4)
    assert target["image_id"] == 2 and target["orig_size"] == (80, 120)


def test_image_deleted_later_gives_the_next_one_and_warns_once(dataset, otadet_log):
    (dataset.images_dir / "b.png").unlink()
    for _ in range(2):
        _, target = dataset[1]  # b.png gone -> wraps to a.png
        assert target["image_id"] == 1
    warnings = [m for m in otadet_log if "b.png" in m]
    assert len(warnings) == 1 and "missing" in warnings[0]


def test_corrupt_image_is_skipped(dataset, otadet_log):
    (dataset.images_dir / "b.png").write_bytes(b"not a png at all")
    _, target = dataset[1]
    assert target["image_id"] == 1  # b broken -> a
    assert any("b.png" in m and "corrupt" in m for m in otadet_log)


def test_unknown_category_is_skipped_with_one_warning(tmp_path, otadet_log):
    bad = ANNOTATIONS + [
        {"id": 8, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 9, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 10, "image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown image
    ]
    images_dir, ann_file = _write_dataset(tmp_path, bad)
    dataset = CocoDetection(images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000))
    warnings = [m for m in otadet_log if "category_id" in m]
    assert len(warnings) == 1 and "ann.json" in warnings[0] and "2 unknown category_id" in warnings[0]
    assert "unknown e.g. 9" in warnings[0] and "1 unknown image_id" in warnings[0]
    assert dataset[1][1]["boxes"].shape == (0, 4)  # image 2 keeps no box


def test_no_image_left_fails(tmp_path):
    images_dir, ann_file = _write_dataset(tmp_path, ANNOTATIONS)
    for f in images_dir.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no valid image left"):
        CocoDetection(images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000))


def test_names_must_match_categories(tmp_path):
    images_dir, ann_file = _write_dataset(tmp_path, ANNOTATIONS)
    with pytest.raises(ValueError, match="2 categories"):
        CocoDetection(images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000), names=["x"])
    named = CocoDetection(
        images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000), names=["kitty", "doggy"]
    )
    assert named.names == ["kitty", "doggy"]


def test_image_size_differing_from_json_rescales_boxes(tmp_path, otadet_log):
    images_dir, ann_file = _write_dataset(tmp_path, ANNOTATIONS)
    cv2.imwrite(str(images_dir / "a.png"), np.zeros((50, 100, 3), np.uint8))  # half the json size
    dataset = CocoDetection(images_dir=images_dir, ann_file=ann_file, transform=build_transforms(False, 50, 1000))
    _, target = dataset[0]
    assert target["orig_size"] == (50, 100) and target["scale"] == 1.0
    np.testing.assert_allclose(target["boxes"][0].numpy(), [5, 10, 25, 25])
    assert any("a.png" in m and "rescaled" in m for m in otadet_log)
