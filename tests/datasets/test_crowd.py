"""The built-in crowd (data/shapes-crowd.yaml): determinism, CrowdHuman-like crowding, .odgt boxes, the stats."""

import json

import numpy as np
import pytest
import yaml

from otadet.datasets import build_dataset
from otadet.datasets.crowd import CrowdConfig, person_polygon
from otadet.datasets.data_yaml import DataError, load_data
from otadet.datasets.shapes import generate_builtin
from otadet.datasets.shapes_stats import crowd_stats


def _crowd_yaml(tmp_path, **generate):
    path = tmp_path / "crowd.yaml"
    path.write_text(yaml.safe_dump({
        "format": "crowdhuman", "builtin": "crowd", "path": str(tmp_path / "crowd"), "generate": generate,
        "train": "images/train", "val": "images/val", "train_annotations": "crowdhuman/annotation_train.odgt",
        "val_annotations": "crowdhuman/annotation_val.odgt", "box": "fbox", "names": ["person"],
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """60 training and 4 val images of the built-in crowd, seed 0, via its data YAML."""
    return load_data(_crowd_yaml(tmp_path_factory.mktemp("crowd"), seed=0, num_train=60, num_val=4))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = _files(generate_builtin(tmp_path / "a", CrowdConfig(seed=1, num_train=3, num_val=1)))
    b = _files(generate_builtin(tmp_path / "b", CrowdConfig(seed=1, num_train=3, num_val=1)))
    c = _files(generate_builtin(tmp_path / "c", CrowdConfig(seed=2, num_train=3, num_val=1)))
    assert a == b and a["annotations/train.json"] != c["annotations/train.json"]
    settings = json.loads(a["generate.json"])
    assert settings["builtin"] == "crowd" and settings["version"] == CrowdConfig.version


def test_crowd_is_crowdhuman_like(crowd):
    stats = crowd_stats(crowd.annotations("train"))
    assert stats["num_images"] == 60
    assert 15 <= stats["persons_per_image"] <= 32  # CrowdHuman: 22.6
    assert stats["pairs_iou05"] >= 1.0 and stats["pairs_iou03"] >= 4.0  # CrowdHuman: 2.40, 9.02
    assert stats["pairs_iou03"] > stats["pairs_iou05"] > stats["pairs_iou07"]
    records = [json.loads(line) for line in crowd.annotations("train").read_text().splitlines()]
    for record in records[:10]:
        for g in record["gtboxes"]:
            (fx, fy, fw, fh), (vx, vy, vw, vh) = g["fbox"], g["vbox"]
            assert fx <= vx and fy <= vy and vx + vw <= fx + fw and vy + vh <= fy + fh  # visible inside full
            if g["tag"] == "person":
                assert 1.4 <= fh / fw <= 4.0  # standing people are tall
    assert json.loads((crowd.root / "annotations" / "train.json").read_text())["categories"] == [
        {"id": 1, "name": "person", "supercategory": "person"}
    ]


def test_reader_gives_full_boxes_and_ignore_regions(crowd):
    dataset = build_dataset(crowd, "val", imgsz=128, max_size=1000, augment=False)
    for i, line in enumerate(crowd.val_annotations.read_text().splitlines()):
        entries = json.loads(line)["gtboxes"]
        xyxy = lambda es: np.array([[x, y, x + w, y + h] for x, y, w, h in (e["fbox"] for e in es)]).reshape(-1, 4)  # noqa: E731
        boxes, labels, ignores = dataset.annotations(i)
        np.testing.assert_array_equal(boxes, xyxy([e for e in entries if e["tag"] == "person"]))
        np.testing.assert_array_equal(ignores, xyxy([e for e in entries if e["tag"] == "mask"]))
        assert (labels == 0).all() and len(boxes) >= 1


def test_person_is_tall_and_stands_on_its_feet():
    points = person_polygon(np.random.default_rng(0), 100.0)
    assert points[:, 1].max() == pytest.approx(0.0) and points[:, 1].min() == pytest.approx(-100.0, abs=0.5)
    width = points[:, 0].max() - points[:, 0].min()
    assert 30 <= width <= 55  # aspect ~0.41 with jitter


def test_crowd_stats_on_hand_written_odgt(tmp_path):
    # Image 1: A, B overlap with IoU 50/150 = 1/3 (> 0.3 only); C equals A but is ignored; D far away.
    # Image 2: E, F with IoU 90/110 = 0.818 (> 0.7), G a 'mask' region.
    box = lambda x, y, w, h: {"tag": "person", "fbox": [x, y, w, h], "extra": {}}  # noqa: E731
    lines = [
        {"ID": "1", "gtboxes": [box(0, 0, 10, 10), box(5, 0, 10, 10), {**box(0, 0, 10, 10), "extra": {"ignore": 1}}, box(50, 50, 5, 5)]},
        {"ID": "2", "gtboxes": [box(0, 0, 10, 10), box(0, 1, 10, 10), {**box(0, 0, 10, 10), "tag": "mask"}]},
    ]
    path = tmp_path / "a.odgt"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    stats = crowd_stats(path)
    assert stats == {"num_images": 2, "persons_per_image": 2.5, "max_persons": 3,
                     "pairs_iou03": 1.0, "pairs_iou05": 0.5, "pairs_iou07": 0.5}  # fmt: skip


def test_bad_generate_key_names_the_file_and_nearest(tmp_path):
    path = _crowd_yaml(tmp_path, seed=0, num_train=2, num_val=1, persons_medain=5)
    with pytest.raises(DataError, match=r"crowd.yaml.*persons_medain.*persons_median"):
        load_data(path)
