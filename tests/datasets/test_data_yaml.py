"""Data YAMLs: schema errors, missing datasets, path resolution, the builtin cache."""

import json
import shutil

import pytest
import yaml

from otadet.datasets.data_yaml import DataError, load_data
from otadet.datasets.shapes import SHAPES_CLASSES, ShapesConfig, generator_settings

MINI = {
    "format": "coco",
    "path": "mini",
    "train": "images/train",
    "val": "images/val",
    "train_annotations": "annotations/train.json",
    "val_annotations": "annotations/val.json",
}


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("OTADET_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("OTADET_CACHE", str(tmp_path / "cache"))


def _yaml(folder, data, name="mini.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def _dataset(root):
    """A minimal COCO layout with categories 5 'b' and 2 'a' (out of id order)."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    data = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}]}
    for split in ("train", "val"):
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return root


def test_unknown_key_suggests_the_valid_one(tmp_path):
    path = _yaml(tmp_path / "cfg", {**MINI, "trian": "x"}, name="typo.yaml")
    with pytest.raises(DataError, match=r"typo\.yaml: unknown key 'trian' — did you mean 'train'\?"):
        load_data(path)


def test_missing_key_and_wrong_type(tmp_path):
    with pytest.raises(DataError, match="missing required key 'val_annotations'"):
        load_data(_yaml(tmp_path, {k: v for k, v in MINI.items() if k != "val_annotations"}))
    with pytest.raises(DataError, match="'train' must be str"):
        load_data(_yaml(tmp_path, {**MINI, "train": 3}))
    with pytest.raises(DataError, match="format 'voc' is not supported — use one of coco, crowdhuman, yolo"):
        load_data(_yaml(tmp_path, {**MINI, "format": "voc"}))
    with pytest.raises(DataError, match="format yolo reads labels"):
        load_data(_yaml(tmp_path, {**MINI, "format": "yolo", "names": ["a"]}))
    yolo = {k: v for k, v in MINI.items() if not k.endswith("annotations")}
    with pytest.raises(DataError, match="format yolo needs 'names:'"):
        load_data(_yaml(tmp_path, {**yolo, "format": "yolo"}))
    with pytest.raises(DataError, match="keys 0..1"):
        load_data(_yaml(tmp_path, {**yolo, "format": "yolo", "names": {0: "a", 2: "b"}}))
    with pytest.raises(DataError, match="'box' is for format crowdhuman only"):
        load_data(_yaml(tmp_path, {**MINI, "box": "fbox"}))
    with pytest.raises(DataError, match="one of fbox, vbox"):
        load_data(_yaml(tmp_path, {**yolo, "format": "crowdhuman", "box": "hbox"}))


def test_yolo_and_crowdhuman_layouts(tmp_path):
    root = tmp_path / "datasets" / "mini"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
    yolo = {k: v for k, v in MINI.items() if not k.endswith("annotations")}
    spec = load_data(_yaml(tmp_path, {**yolo, "format": "yolo", "names": {0: "a", 1: "b"}}))
    assert spec.names == ["a", "b"] and spec.annotations("val") == root / "labels" / "val" and spec.box is None
    for split in ("train", "val"):
        (root / f"annotation_{split}.odgt").write_text("")
    spec = load_data(_yaml(tmp_path, {**yolo, "format": "crowdhuman"}))
    assert spec.names == ["person"] and spec.box == "fbox"
    assert spec.annotations("train") == root / "annotation_train.odgt"


def test_shipped_crowdhuman_yaml_names_paths_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_data("crowdhuman")
    message = str(error.value)
    assert str(tmp_path / "datasets" / "crowdhuman") in message and "crowdhuman.org/download.html" in message
    assert "data/crowdhuman" in message  # next to the YAML was looked at too


def test_missing_dataset_names_paths_and_download(tmp_path):
    path = _yaml(tmp_path / "cfg", {**MINI, "download": "http://example.com/mini.zip"})
    with pytest.raises(FileNotFoundError) as info:
        load_data(path)
    message = str(info.value)
    assert str(tmp_path / "cfg" / "mini") in message and str(tmp_path / "datasets" / "mini") in message
    assert "http://example.com/mini.zip" in message and "mini.yaml" in message


def test_missing_split_names_its_path(tmp_path):
    root = _dataset(tmp_path / "datasets" / "mini")
    shutil.rmtree(root / "images" / "train")
    path = _yaml(tmp_path / "cfg", MINI)
    with pytest.raises(FileNotFoundError, match=f"'train' path {root / 'images' / 'train'} does not exist"):
        load_data(path)
    assert load_data(path, require=("val",)).val_images == root / "images" / "val"  # evaluation only


def test_relative_path_next_to_yaml_then_datasets_dir(tmp_path):
    path = _yaml(tmp_path / "cfg", MINI)
    in_datasets = _dataset(tmp_path / "datasets" / "mini")
    spec = load_data(path)
    assert spec.root == in_datasets and spec.yaml_file == path
    assert spec.train_annotations == in_datasets / "annotations" / "train.json"
    assert spec.names == ["a", "b"]  # from the json, sorted by category id
    next_to_yaml = _dataset(tmp_path / "cfg" / "mini")
    assert load_data(path).root == next_to_yaml  # the YAML's folder wins
    absolute = _yaml(tmp_path / "other", {**MINI, "path": str(in_datasets), "names": ["x", "y"]})
    spec = load_data(absolute)
    assert spec.root == in_datasets and spec.names == ["x", "y"] and spec.images("val") == in_datasets / "images" / "val"


def test_unknown_name_lists_shipped():
    with pytest.raises(FileNotFoundError, match="shipped: .*coco.*shapes"):
        load_data("no_such_data")


def test_shipped_coco_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images\.cocodataset\.org/zips/val2017\.zip"):
        load_data("coco")
    root = _dataset(tmp_path / "datasets" / "coco")
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        shutil.copy(root / "annotations" / "val.json", root / "annotations" / f"instances_{split}.json")
    spec = load_data("coco")
    assert spec.root == root and len(spec.names) == 80 and spec.names[0] == "person" and spec.names[-1] == "toothbrush"


def test_builtin_generates_once_then_reuses(tmp_path, otadet_log):
    data = {
        **MINI,
        "builtin": "shapes",
        "path": "tiny-shapes",
        "generate": {"seed": 1, "num_train": 3, "num_val": 2},
    }
    path = _yaml(tmp_path / "cfg", data)
    spec = load_data(path)
    assert spec.root == tmp_path / "cache" / "tiny-shapes" and spec.builtin == "shapes"
    assert spec.names == list(SHAPES_CLASSES)
    assert len(list(spec.train_images.glob("*.jpg"))) == 3 and len(list(spec.val_images.glob("*.jpg"))) == 2
    assert sum("Generated" in m and "tiny-shapes" in m for m in otadet_log) == 1
    load_data(path)
    assert sum("Generated" in m for m in otadet_log) == 1
    # Other settings for the same cache folder: refused, not silently mixed.
    with pytest.raises(DataError, match="delete"):
        load_data(_yaml(tmp_path / "cfg", {**data, "generate": {"seed": 2, "num_train": 3, "num_val": 2}}))
    with pytest.raises(DataError, match="did you mean 'num_train'"):
        load_data(_yaml(tmp_path / "cfg", {**data, "generate": {"num_trian": 3}}))


def test_shipped_shapes_yaml_uses_the_cache(tmp_path):
    # A cache that records the shipped settings is taken as is (no generation in this test).
    root = _dataset(tmp_path / "cache" / "shapes-v4")
    (root / "generate.json").write_text(json.dumps(generator_settings(ShapesConfig(seed=0, num_train=800, num_val=200))))
    spec = load_data("shapes")
    assert spec.root == root and spec.names == list(SHAPES_CLASSES)
    assert spec.val_annotations == root / "annotations" / "val.json"


def test_shipped_shapes_crowdhuman_and_yolo_share_the_cache(tmp_path):
    # The shipped settings recorded in a stub cache (no images): the other formats are written next to it.
    root = _dataset(tmp_path / "cache" / "shapes-v4")
    (root / "generate.json").write_text(json.dumps(generator_settings(ShapesConfig(seed=0, num_train=800, num_val=200))))
    spec = load_data("shapes-crowdhuman")
    assert spec.root == root and spec.names == ["person"] and spec.box == "fbox" and spec.format == "crowdhuman"
    assert spec.annotations("val") == root / "crowdhuman" / "annotation_val.odgt" and spec.annotations("val").is_file()
    spec = load_data("shapes-yolo")
    assert spec.root == root and spec.names == list(SHAPES_CLASSES) and spec.annotations("train") == root / "labels" / "train"
    assert (root / "labels" / "train").is_dir()
    assert json.loads((root / "annotations" / "val.json").read_text())["images"] == []  # the COCO files are untouched
