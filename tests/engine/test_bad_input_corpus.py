"""The bad-input corpus (issue 15), one parametrised test per category: every file is built in
tmp_path, every case names its expected outcome class, and the assertion is that class:

- ("error", text): a clear error whose message names the file (or key) and contains `text`;
- ("skip", text, counts): a warning containing `text`, and exactly `counts` kept (images, boxes);
- ("ok", counts): read as is, with these counts.

File-system cases run under `hang_guard` (SIGALRM, tests/conftest.py): a hang fails the test.
"""

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from otadet import Detector
from otadet.cli import main
from otadet.config import load_model_config
from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataset
from otadet.engine.sources import read_frames, resolve_sources
from otadet.models.build import build_detector
from otadet.utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

from tiny_run import TINY_RUN


def _image(path: Path, h: int = 60, w: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming width x height, then IEND: ~60 bytes, no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ datasets (train split)
def _yolo(root: Path, labels: dict, **yaml_keys) -> Path:
    for name in ("a.jpg", "b.jpg"):
        _image(root / "images" / "train" / name)
        _image(root / "images" / "val" / name)
    (root / "labels" / "train").mkdir(parents=True)
    for name, text in labels.items():
        (root / "labels" / "train" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    spec = {"format": "yolo", "path": str(root), "train": "images/train", "val": "images/val", "names": ["a", "b"], **yaml_keys}
    (root / "d.yaml").write_text(yaml.safe_dump(spec))
    return root / "d.yaml"


def _odgt(root: Path, lines: list, **yaml_keys) -> Path:
    for name in ("a", "b"):
        _image(root / "Images" / f"{name}.jpg")
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    for split in ("train", "val"):
        (root / f"annotation_{split}.odgt").write_text(text)
    spec = {"format": "crowdhuman", "path": str(root), "train": "Images", "val": "Images", **yaml_keys}
    (root / "d.yaml").write_text(yaml.safe_dump(spec))
    return root / "d.yaml"


_IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}, {"id": 2, "file_name": "b.jpg", "width": 80, "height": 60}]
_CATS = [{"id": 1, "name": "x"}]


def _coco(root: Path, data, **yaml_keys) -> Path:
    for name in ("a", "b"):
        _image(root / "images" / f"{name}.jpg")
    (root / "ann.json").write_bytes(data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode())
    spec = {"format": "coco", "path": str(root), "train": "images", "val": "images", "train_annotations": "ann.json",
            "val_annotations": "ann.json", **yaml_keys}  # fmt: skip
    (root / "d.yaml").write_text(yaml.safe_dump(spec))
    return root / "d.yaml"


def _ann(**fields) -> dict:
    return {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], **fields}


def _person(**fields) -> dict:
    return {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 30, 40], "extra": {}}], **fields}


DATASETS = {
    # YOLO txt labels
    "yolo-text-coordinate": (lambda r: _yolo(r, {"a.txt": "0 0.5 a 0.2 0.2\n1 0.3 0.3 0.1 0.1"}), ("skip", "not numbers", (2, 1))),
    "yolo-4-columns": (lambda r: _yolo(r, {"a.txt": "0 0.5 0.5 0.2"}), ("skip", "4 columns, expected 5", (2, 0))),
    "yolo-negative-class": (lambda r: _yolo(r, {"a.txt": "-1 0.5 0.5 0.2 0.2"}), ("skip", "class id outside 0..1", (2, 0))),
    "yolo-fractional-class": (lambda r: _yolo(r, {"a.txt": "1.5 0.5 0.5 0.2 0.2"}), ("skip", "class id outside 0..1", (2, 0))),
    "yolo-nan": (lambda r: _yolo(r, {"a.txt": "0 nan 0.5 0.2 0.2"}), ("skip", "not finite", (2, 0))),
    "yolo-binary-label": (lambda r: _yolo(r, {"a.txt": b"\x00\xff\xfe\x01junk"}), ("skip", "expected 5", (2, 0))),
    "yolo-box-larger-than-image": (lambda r: _yolo(r, {"a.txt": "0 0.5 0.5 5 5"}), ("ok", (2, 1))),
    "yolo-names-not-strings": (lambda r: _yolo(r, {}, names=[1, 2]), ("error", "'names' must be a non-empty list")),
    "yolo-unknown-key": (lambda r: _yolo(r, {}, nc=2), ("error", "unknown key 'nc'")),
    "yolo-path-not-string": (lambda r: _yolo(r, {}, path=5), ("error", "'path' must be str")),
    "yolo-corrupt-image": (
        lambda r: (_yolo(r, {}), (r / "images" / "train" / "a.jpg").write_bytes(b"xx"), r / "d.yaml")[-1],
        ("skip", "a.jpg cannot be read as an image", (1, 0)),
    ),
    "yolo-huge-header": (
        lambda r: (_yolo(r, {}), _png_header_only(r / "images" / "train" / "c.png", 40000, 40000), r / "d.yaml")[-1],
        ("skip", "over max_pixels", (2, 0)),
    ),
    # CrowdHuman .odgt
    "odgt-line-not-json": (lambda r: _odgt(r, ["{oops", _person(ID="b")]), ("skip", ":1: not JSON", (1, 1))),
    "odgt-id-not-string": (lambda r: _odgt(r, [_person(ID=3), _person(ID="b")]), ("skip", "no string 'ID'", (1, 1))),
    "odgt-box-string": (lambda r: _odgt(r, [{"ID": "a", "gtboxes": [{"tag": "person", "fbox": "1,2,3,4"}]}, _person(ID="b")]),
                        ("skip", "'fbox' is '1,2,3,4'", (1, 1))),  # fmt: skip
    "odgt-extra-not-object": (lambda r: _odgt(r, [_person(ID="b"), {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3, 4], "extra": []}]}]),
                              ("skip", "'extra' is not an object", (1, 1))),  # fmt: skip
    "odgt-repeated-id": (lambda r: _odgt(r, [_person(), _person()]), ("skip", "repeats an earlier line", (1, 1))),
    "odgt-every-line-bad": (lambda r: _odgt(r, ["[1, 2]"]), ("error", "no valid image left")),
    "odgt-unknown-box-key": (lambda r: _odgt(r, [_person()], box="hbox"), ("error", "one of fbox, vbox")),
    # COCO json
    "coco-not-json": (lambda r: _coco(r, "{"), ("error", "not valid UTF-8 json")),
    "coco-utf16": (lambda r: _coco(r, json.dumps({"images": _IMAGES, "annotations": [], "categories": _CATS}).encode("utf-16")),
                   ("error", "not valid UTF-8 json")),  # fmt: skip
    "coco-a-list": (lambda r: _coco(r, "[]"), ("error", "a COCO json is an object")),
    "coco-no-categories": (lambda r: _coco(r, {"images": _IMAGES, "annotations": []}), ("error", "no 'categories'")),
    "coco-category-without-name": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [], "categories": [{"id": 1}]}),
                                   ("error", "needs a string 'name'")),  # fmt: skip
    "coco-category-id-string": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [], "categories": [{"id": "1", "name": "x"}]}),
                                ("error", "no integer 'id'")),  # fmt: skip
    "coco-width-string": (lambda r: _coco(r, {"images": [{**_IMAGES[0], "width": "80"}], "annotations": [], "categories": _CATS}),
                          ("error", "width/height positive integers")),  # fmt: skip
    "coco-bbox-string": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [_ann(bbox="1 1 5 5"), _ann(id=2)], "categories": _CATS}),
                         ("skip", "1 bbox not 4 finite numbers", (2, 1))),  # fmt: skip
    "coco-bbox-bool": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [_ann(bbox=[True, 1, 5, 5])], "categories": _CATS}),
                       ("skip", "bbox not 4 finite numbers", (2, 0))),  # fmt: skip
    "coco-image-id-string": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [_ann(image_id="1")], "categories": _CATS}),
                             ("skip", "1 unknown image_id", (2, 0))),  # fmt: skip
    "coco-iscrowd-2": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [_ann(iscrowd=2)], "categories": _CATS}),
                       ("skip", "iscrowd not 0 or 1", (2, 0))),  # fmt: skip
    "coco-area-string": (lambda r: _coco(r, {"images": _IMAGES, "annotations": [_ann(area="x")], "categories": _CATS}), ("ok", (2, 1))),
    "coco-nan-bbox": (lambda r: _coco(r, '{"images": %s, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
                                      '"bbox": [NaN, 1, 5, 5]}], "categories": %s}' % (json.dumps(_IMAGES), json.dumps(_CATS))),
                      ("skip", "bbox not 4 finite numbers", (2, 0))),  # fmt: skip
    "coco-size-disagrees": (lambda r: _coco(r, {"images": [{**_IMAGES[0], "width": 800, "height": 600}], "annotations": [_ann(bbox=[100, 100, 50, 50])],
                                                "categories": _CATS}), ("skip", "says 800x600, boxes rescaled", (1, 1))),  # fmt: skip
    "coco-image-missing": (lambda r: _coco(r, {"images": _IMAGES + [{**_IMAGES[0], "id": 3, "file_name": "c.jpg"}], "annotations": [],
                                               "categories": _CATS}), ("skip", "1 of 3 images listed", (2, 0))),  # fmt: skip
}


@pytest.mark.parametrize("case", list(DATASETS))
def test_dataset_corpus(case, tmp_path, hang_guard, log_messages):
    make, expected = DATASETS[case]
    data_yaml = make(tmp_path / "d")
    if expected[0] == "error":
        with pytest.raises(ValueError) as e:  # DataError, FileNotFoundError and the readers' errors are ValueErrors or named below
            build_dataset(load_data(str(data_yaml)), "train", imgsz=64, max_size=96, augment=False)
        assert expected[1] in str(e.value) and str(tmp_path) in str(e.value), str(e.value)
        return
    dataset = build_dataset(load_data(str(data_yaml)), "train", imgsz=64, max_size=96, augment=False)
    boxes = sum(len(dataset.annotations(i)[0]) for i in range(len(dataset)))
    assert (len(dataset), boxes) == expected[-1]
    assert sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset))) == boxes  # every image reads, with its boxes
    warned = [m for m in log_messages if "WARNING" in m]
    if expected[0] == "skip":
        assert any(expected[1] in m for m in warned), warned
    else:
        assert not warned, warned


# ------------------------------------------------------------------ checkpoints
def _checkpoint_state() -> dict:
    cfg = load_model_config("ota_tiny.yaml")
    net = build_detector(cfg, 2)
    return {"format": CHECKPOINT_FORMAT, "model_cfg": cfg.to_dict(), "names": ["a", "b"], "model": net.state_dict()}


class _NeedsPickle:
    pass


def _replace(key, value):
    return lambda s: {**s, key: value}


CHECKPOINTS = {
    "random-bytes": (lambda p, s: p.write_bytes(np.random.default_rng(0).bytes(300)), "loads with weights_only=True"),
    "truncated": (lambda p, s: (save_checkpoint(s, p), p.write_bytes(p.read_bytes()[:4000])), "loads with weights_only=True"),
    "needs-pickle": (lambda p, s: torch.save({**s, "extra": _NeedsPickle()}, p), "weights_only=True"),
    "a-state-dict": (lambda p, s: torch.save(s["model"], p), "not an otadet checkpoint"),
    "keys-missing": (lambda p, s: save_checkpoint({"foo": 1}, p), "has no model_cfg, names, model"),
    "names-a-string": (lambda p, s: save_checkpoint(_replace("names", "ab")(s), p), "'names' is 'ab'"),
    "model-cfg-edited": (lambda p, s: save_checkpoint({**s, "model_cfg": {**s["model_cfg"], "name": 5}}, p), "model_cfg: 'name' must be str"),
    "shapes-edited": (lambda p, s: save_checkpoint({**s, "model": {k: v[..., :1] if v.dim() else v for k, v in s["model"].items()}}, p),
                      "do not fit its own model_cfg"),  # fmt: skip
    "nan-weights": (lambda p, s: save_checkpoint({**s, "model": {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                                                               for k, v in s["model"].items()}}, p), "hold NaN or inf"),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_checkpoint_corpus(case, tmp_path, hang_guard):
    make, text = CHECKPOINTS[case]
    path = tmp_path / "model.pt"
    make(path, _checkpoint_state())
    with pytest.raises(ValueError) as e:
        Detector(str(path), verbose=False)
    assert text in str(e.value) and str(path) in str(e.value), str(e.value)


# ------------------------------------------------------------------ exported files
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from otadet.engine.exporter import export_onnx

    net = build_detector(load_model_config("ota_tiny.yaml"), 2).eval()
    file = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(net, file=file, imgsz=64, metadata={"names": ["a", "b"]}, log=False)


def _with_metadata(source: Path, target: Path, **changes) -> Path:
    import onnx

    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(changes)  # raw strings: the JSON an edited file carries, valid or not
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return target


EXPORTED = {
    "names-integers": ({"names": "[1, 2]"}, "metadata 'names'"),
    "names-three-for-two-columns": ({"names": '["a", "b", "c"]'}, "its output has 6 columns"),
    "names-dict-with-gap": ({"names": '{"0": "a", "5": "b"}'}, "they must be 0..1"),
    "imgsz-string": ({"imgsz": '"big"'}, "metadata 'imgsz' = 'big'"),
    "imgsz-negative": ({"imgsz": "-5"}, "metadata 'imgsz' = -5"),
    "nms-unknown-keys": ({"nms": '{"conf": 0.5, "x": 1}'}, "metadata 'nms'"),
    "nms-conf-above-one": ({"nms": '{"conf": 5, "iou": 0.5, "max_det": 10}'}, "metadata 'conf' = 5"),
    "strides-strings": ({"strides": '["8"]'}, "metadata 'strides'"),
    "dynamic-not-bool": ({"export_args": '{"dynamic": "yes"}'}, "metadata 'dynamic' = 'yes'"),
    "not-json": ({"names": "[a, b"}, "is not JSON"),
}


@pytest.mark.parametrize("case", [*EXPORTED, "random-bytes", "torchscript-random-bytes"])
def test_exported_file_corpus(case, exported, tmp_path, hang_guard):
    if case == "random-bytes":
        target, text = tmp_path / "x.onnx", "is not an ONNX model"
        target.write_bytes(np.random.default_rng(0).bytes(500))
    elif case == "torchscript-random-bytes":
        target, text = tmp_path / "x.torchscript", "is not a TorchScript archive"
        target.write_bytes(np.random.default_rng(0).bytes(500))
    else:
        changes, text = EXPORTED[case]
        target = _with_metadata(exported, tmp_path / "x.onnx", **changes)
    with pytest.raises(ValueError) as e:
        Detector(str(target), verbose=False)
    assert text in str(e.value) and str(target) in str(e.value), str(e.value)


# ------------------------------------------------------------------ predict sources
SOURCES = {
    "text-named-jpg": (lambda d: (d / "bad.jpg").write_text("hello"), "cannot be decoded"),
    "zero-bytes": (lambda d: (d / "bad.jpg").write_bytes(b""), "bad.jpg"),
    "truncated-jpeg": (lambda d: (d / "bad.jpg").write_bytes(_image(d / "full.jpg").read_bytes()[:300]), "truncated"),
    "huge-header-png": (lambda d: _png_header_only(d / "bad.png", 40000, 40000), "over max_pixels"),
    "garbage-video": (lambda d: (d / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(5000)), "cannot be opened"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_predict_source_corpus(case, tmp_path, hang_guard, log_messages):
    make, text = SOURCES[case]
    make(tmp_path)
    bad = next(p for p in sorted(tmp_path.iterdir()) if p.stem == "bad")
    good = _image(tmp_path / "good.png")
    frames = list(read_frames(resolve_sources([str(bad), str(good)])))
    assert [f.source.path for f in frames] == [str(good)]  # the bad one skipped, the good one read
    assert any(bad.name in m and text in m for m in log_messages), log_messages


# ------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:
    return save_checkpoint(_checkpoint_state(), tmp_path_factory.mktemp("ck") / "best.pt")


CLI = [
    (["frobnicate"], "unknown mode 'frobnicate'"),
    (["train", "epochs"], "is not key=value"),
    (["train", "foo=1"], "unknown key 'foo'"),
    (["cfg", "extra=1"], "takes no arguments"),
    (["train", "data=shapes.yaml", "optimizer=lion"], "optimizer='lion' is not one of sgd, adamw"),
    (["train", "data=shapes.yaml", "imgsz=[64,a]"], "imgsz=[64, 'a']"),
    (["train", "data=shapes.yaml", "device=0,1"], "CUDA device 0 is not available"),
    (["train", "data=shapes.yaml", "pretrained=garbage.pt"], "garbage.pt does not load with weights_only=True"),
    (["train", "data=nope.yaml"], "data 'nope.yaml'"),
    (["val", "model={ck}", "data=shapes.yaml", "split=test"], "split='test' is not one of train, val"),
    (["val", "model={ck}", "data=shapes.yaml", "save_json=/x.json"], "'save_json' must be bool"),
    (["predict", "model={ck}", "source=nope.jpg"], "source nope.jpg does not exist"),
    (["predict", "model={ck}", "source=img.jpg", "conf=2"], "conf=2.0 is out of range"),
    (["predict", "model={ck}", "source=img.jpg", "classes=[9]"], "classes=[9]"),
    (["predict", "model={ck}", "source=img.jpg", "device=7"], "CUDA device 7 is not available"),
    (["predict", "model=garbage.pt", "source=img.jpg"], "garbage.pt is not an otadet checkpoint"),
    (["predict", "model=nope.yaml", "source=img.jpg"], "model YAML 'nope.yaml' not found"),
    (["export", "model={ck}", "format=tflite"], "format='tflite' is not supported"),
    (["export", "model={ck}", "imgsz=0"], "imgsz=0 is out of range"),
    (["export", "model={ck}", "half=true"], "needs a CUDA device"),
    (["export", "model=garbage.onnx"], "garbage.onnx is not an ONNX model"),
    (["convert", "source=nope.pth"], "nope.pth does not exist"),
]


@pytest.mark.parametrize("argv, text", CLI, ids=[" ".join(a)[:40] for a, _ in CLI])
def test_cli_corpus(argv, text, checkpoint_file, tmp_path, monkeypatch, capsys, hang_guard):
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "img.jpg")
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 64)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00" * 64)
    code = main([a.replace("{ck}", str(checkpoint_file)) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("otadet: error:")]
    assert code == 2 and len(errors) == 1 and text in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "train").exists() or not any((tmp_path / "runs" / "train").iterdir())  # no run folder left behind


# ------------------------------------------------------------------ train and val on bad data
def test_training_skips_bad_images_and_lines_and_counts_them(tmp_path, hang_guard, log_messages, restore_determinism):
    labels = {"a.txt": "0 0.5 0.5 0.4 0.4\n0 0.5 x 0.2 0.2", "b.txt": "1 0.3 0.3 0.2 0.2"}
    data = _yolo(tmp_path / "d", labels)
    for name in ("c.jpg", "d.jpg"):
        _image(tmp_path / "d" / "images" / "train" / name)
    (tmp_path / "d" / "images" / "train" / "c.jpg").write_bytes(b"not an image")
    metrics = Detector("ota_tiny.yaml", verbose=False).train(
        data=str(data), project=str(tmp_path / "runs"), name="bad", **{**TINY_RUN, "iters": 2, "batch": 2}
    )
    assert "AP" in metrics  # finished and validated
    assert any("c.jpg cannot be read as an image" in m for m in log_messages)
    assert any("a.txt:2: not numbers" in m for m in log_messages)


def test_val_with_other_class_names_warns(checkpoint_file, tmp_path, log_messages):
    data = _yolo(tmp_path / "d", {"a.txt": "0 0.5 0.5 0.4 0.4"}, names=["cat", "dog"])
    Detector(str(checkpoint_file), verbose=False).val(data=str(data), imgsz=64, max_size=96, batch=2, workers=0, verbose=False,
                                                     project=str(tmp_path / "runs"))  # fmt: skip
    assert any("class names differ" in m and "0: 'a' vs 'cat'" in m for m in log_messages), log_messages
