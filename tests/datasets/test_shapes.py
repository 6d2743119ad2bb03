"""The built-in shapes generator: determinism, crowding statistics, visible-extent boxes, atomic writes."""

import json

import cv2
import numpy as np
import pytest

from otadet.datasets import shapes
from otadet.datasets.shapes import SHAPES_CLASSES, Scene, generate_shapes, render_image
from otadet.datasets.shapes_stats import shapes_stats


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(generate_shapes(tmp_path / "a", seed=3, num_train=3, num_val=2))
    b = _files(generate_shapes(tmp_path / "b", seed=3, num_train=3, num_val=2))
    c = _files(generate_shapes(tmp_path / "c", seed=4, num_train=3, num_val=2))
    assert len(a) == 5 + 2 + 1  # 5 jpgs, 2 jsons, generate.json
    assert a == b
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert a["images/train/000000.jpg"] != c["images/train/000000.jpg"]


def test_coco_format_and_requirements(shapes_root):
    with open(shapes_root / "annotations" / "train.json") as f:
        data = json.load(f)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]
    assert [c["name"] for c in data["categories"]] == list(SHAPES_CLASSES)
    assert len(data["images"]) == 40
    for img in data["images"][:5]:  # the json sizes are the files' sizes
        image = cv2.imread(str(shapes_root / "images" / "train" / img["file_name"]))
        assert image.shape == (img["height"], img["width"], 3)
        assert 192 <= img["height"] <= 288 and 224 <= img["width"] <= 320
    ann = data["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
    assert ann["iscrowd"] == 0 and ann["area"] <= ann["bbox"][2] * ann["bbox"][3]

    stats = shapes_stats(shapes_root / "annotations" / "train.json")
    assert stats["num_images"] == 40
    assert stats["mean_objects"] >= 12
    assert stats["frac_overlap_iou03"] >= 0.3
    assert stats["num_classes"] >= 3
    assert stats["min_size"] <= 12
    assert stats["max_size_frac"] >= 0.35
    assert stats["boxes_inside"]
    assert stats["frac_small"] > 0.3 and stats["frac_medium"] > 0.2  # many small and medium objects


def test_stats_on_hand_written_json(tmp_path):
    # Image 1: boxes A, B with IoU 50/150 = 1/3 > 0.3; C alone. Image 2: one box.
    data = {
        "images": [{"id": 1, "width": 100, "height": 50}, {"id": 2, "width": 40, "height": 80}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [5, 0, 10, 10]},
            {"image_id": 1, "category_id": 1, "bbox": [60, 20, 25, 25]},
            {"image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 9]},
        ],
        "categories": [],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    stats = shapes_stats(tmp_path / "a.json")
    assert stats["mean_objects"] == 2.0 and stats["num_objects"] == 4
    assert stats["frac_overlap_iou03"] == 0.5
    assert stats["num_classes"] == 3
    assert stats["min_size"] == 6.0 and stats["max_size"] == 25.0
    assert stats["max_size_frac"] == 0.5
    assert stats["boxes_inside"]


def _rect(x0, y0, x1, y1):
    """Polygon covering pixel columns x0..x1-1 and rows y0..y1-1 (vertices on pixel centres)."""
    return np.array([[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]], np.float64)


def test_scene_box_is_visible_extent():
    scene = Scene(height=20, width=30, min_visible=0.1)
    assert scene.try_add(_rect(2, 2, 12, 12), 0).tolist() == []  # A: 10x10 pixels
    assert scene.try_add(_rect(0, 0, 7, 20), 1).tolist() == [0]  # B hides A's columns 2..6
    np.testing.assert_array_equal(scene.boxes(), [[7, 2, 12, 12], [0, 0, 7, 20]])
    np.testing.assert_array_equal(scene.visible_pixels(), [50, 140])
    # C would hide the rest of A: refused, nothing changes.
    assert scene.try_add(_rect(7, 2, 12, 12), 2) is None
    assert len(scene) == 2 and scene.labels == [0, 1]
    # D hides A's bottom rows 8..11 (20 of its 100 pixels): A keeps 30 >= 10.
    assert scene.try_add(_rect(5, 8, 20, 15), 2).tolist() == [0, 1]
    np.testing.assert_array_equal(scene.boxes()[0], [7, 2, 12, 8])
    # Render: each pixel has the colour of the object on top.
    image = render_image(scene, np.zeros((20, 30, 3), np.float32), np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]]))
    assert image[3, 8, 0] == 1 and image[3, 3, 0] == 2 and image[9, 8, 0] == 3 and image[0, 20, 0] == 0


def test_scene_min_visible_is_a_fraction_of_own_pixels():
    scene = Scene(height=10, width=10, min_visible=0.5)
    scene.try_add(_rect(0, 0, 4, 10), 0)  # 40 pixels
    assert scene.try_add(_rect(0, 0, 3, 10), 1) is None  # would leave 10/40
    assert scene.try_add(_rect(0, 0, 2, 10), 1) is not None  # leaves 20/40 = 0.5
    np.testing.assert_array_equal(scene.boxes(), [[2, 0, 4, 10], [0, 0, 2, 10]])


def test_killed_generation_leaves_nothing(tmp_path, monkeypatch):
    real = shapes._write_split

    def dies_on_val(folder, split, count, cfg):
        if split == "val":
            raise KeyboardInterrupt
        real(folder, split, count, cfg)

    monkeypatch.setattr(shapes, "_write_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "data", num_train=2, num_val=1)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder
    monkeypatch.setattr(shapes, "_write_split", real)
    root = generate_shapes(tmp_path / "data", num_train=2, num_val=1)
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "generate.json", "images"]
    with pytest.raises(FileExistsError, match="delete it"):
        generate_shapes(tmp_path / "data", num_train=2, num_val=1)


def test_bad_settings_fail():
    with pytest.raises(ValueError, match="objects"):
        shapes.ShapesConfig(objects=(5, 2))
    with pytest.raises(TypeError):
        generate_shapes("/nonexistent/never", num_trian=3)
