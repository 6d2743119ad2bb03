"""Validator: coco_evaluate against pycocotools called directly, and validate() end to end.

The reference is pycocotools' COCOeval on the same annotation file and detections; the
coordinate mapping is checked with a fake network that echoes each image's gt boxes in input
pixels, which must score AP 1.0 once mapped back to the annotation file's pixels. The same
fake network on CrowdHuman data scores recall 1 and MR⁻² 0, and the saved .odgt detections,
scored again, give the returned numbers; on YOLO data it scores AP 1.0 through COCOeval.
"""

import contextlib
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from otadet.config import load_model_config
from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataloader
from otadet.datasets.shapes import generate_shapes
from otadet.engine.validator import METRIC_KEYS, coco_evaluate, input_sizes, validate
from otadet.metrics import crowdhuman
from otadet.utils.log import LOGGER
from otadet.models.build import build_detector
from otadet.models.detector import DenseOutputs

CATEGORY_IDS = {1: 10, 2: 20, 3: 30, 4: 40}  # sparse COCO ids, so label -> category id is exercised
IMGSZ, MAX_SIZE = 120, 150  # shapes images are 192-288 px high: every image is resized by ~0.4-0.6


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory, write_data_yaml):
    """A 6-image shapes val split with category ids 10..40, and its data YAML."""
    tmp = tmp_path_factory.mktemp("val_shapes")
    root = generate_shapes(tmp / "shapes", seed=3, num_train=1, num_val=6)
    ann_file = root / "annotations" / "val.json"
    data = json.loads(ann_file.read_text())
    for cat in data["categories"]:
        cat["id"] = CATEGORY_IDS[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = CATEGORY_IDS[ann["category_id"]]
    for ann in data["annotations"][::15]:  # some crowd regions: ignore regions in training, iscrowd in COCOeval
        ann["iscrowd"] = 1
    ann_file.write_text(json.dumps(data))
    return write_data_yaml(tmp / "shapes.yaml", path=root)


@pytest.fixture(scope="module")
def loader(data_yaml):
    spec = load_data(data_yaml, require=("val",))
    return build_dataloader(spec, "val", imgsz=IMGSZ, max_size=MAX_SIZE, batch=4, workers=0, shuffle=False)


def _quiet_coco(ann_file) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _reference_stats(ann_file, detections: list[dict]) -> np.ndarray:
    """pycocotools, called directly on the annotation file and the detections."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(ann_file))
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _gt_detections(coco_gt: COCO) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in coco_gt.anns.values()
    ]


def _imperfect_detections(coco_gt: COCO, seed: int = 0) -> list[dict]:
    """The gts jittered (some badly, some with the wrong class) plus false boxes, with random scores."""
    rng = np.random.default_rng(seed)
    cats = sorted(coco_gt.cats)
    out = []
    for a in coco_gt.anns.values():
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, rng.choice([0.02, 0.1, 0.4]), 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        out.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for image_id, info in coco_gt.imgs.items():
        for _ in range(5):
            w, h = rng.uniform(5, 60, 2)
            x, y = rng.uniform(0, info["width"] - w), rng.uniform(0, info["height"] - h)
            cat = int(rng.choice(cats))
            out.append({"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": float(rng.random())})
    return out


def test_coco_evaluate_matches_pycocotools(data_yaml, loader):
    ann_file = load_data(data_yaml, require=("val",)).val_annotations
    coco_gt = _quiet_coco(ann_file)
    perfect = _gt_detections(coco_gt)
    for detections in (perfect, perfect + _imperfect_detections(coco_gt), _imperfect_detections(coco_gt, seed=1)):
        before = json.dumps(detections)
        metrics = coco_evaluate(coco_gt, detections, verbose=False)
        assert json.dumps(detections) == before, "coco_evaluate must not modify the caller's detections"
        reference = _reference_stats(ann_file, detections)
        assert list(metrics) == list(METRIC_KEYS)
        for key, value in zip(METRIC_KEYS, reference):
            assert abs(metrics[key] - float(value)) <= 1e-12, key
    assert coco_evaluate(coco_gt, perfect, verbose=False)["AP"] == 1.0
    imperfect = coco_evaluate(coco_gt, _imperfect_detections(coco_gt), verbose=False)
    assert 0.0 < imperfect["AP"] < 1.0


def test_coco_evaluate_empty_and_foreign_ids(data_yaml):
    coco_gt = _quiet_coco(load_data(data_yaml, require=("val",)).val_annotations)
    assert coco_evaluate(coco_gt, [], verbose=False) == {key: 0.0 for key in METRIC_KEYS}
    foreign = [{"image_id": 999, "category_id": 10, "bbox": [0, 0, 5, 5], "score": 0.9}]
    with pytest.raises(ValueError, match="999"):
        coco_evaluate(coco_gt, foreign, verbose=False)


def test_validate_random_model(loader, tmp_path):
    torch.manual_seed(0)
    model = build_detector(load_model_config("ota_tiny"), 4)
    model.train()
    save_json = tmp_path / "detections.json"
    metrics = validate(
        model, loader, conf=0.01, device=torch.device("cpu"), names=["circle", "rectangle", "triangle", "cross"],
        save_json=save_json, verbose=False,
    )  # fmt: skip
    assert model.training, "validate restores the model's mode"
    crowd = sum(a["iscrowd"] for a in loader.dataset.coco.anns.values())
    assert crowd > 0 and metrics["images"] == 6 and metrics["instances"] == len(loader.dataset.coco.anns) - crowd
    for key in METRIC_KEYS:
        assert math.isfinite(metrics[key]) and (0.0 <= metrics[key] <= 1.0 or metrics[key] == -1.0), key
    assert set(metrics["speed"]) == {"preprocess", "inference", "postprocess"}
    detections = json.loads(save_json.read_text())
    assert detections, "a random model at conf 0.01 still detects something"
    assert {d["category_id"] for d in detections} <= set(CATEGORY_IDS.values())
    # The saved results, evaluated by pycocotools directly, give the returned metrics.
    reference = _reference_stats(loader.dataset.ann_file, detections)
    for key, value in zip(METRIC_KEYS, reference):
        assert abs(metrics[key] - float(value)) <= 1e-12, key


class GtEcho(nn.Module):
    """A fake network that outputs, for each image of each expected batch, its gt boxes in input
    pixels (at the first anchors, class score ~1) and low-scored junk at the others."""

    def __init__(self, batches, num_classes: int):
        super().__init__()
        self.batches = list(batches)
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, images):
        batch = self.batches[self.calls]
        self.calls += 1
        assert torch.equal(images, batch.images), "the loader's order is the expected one"
        b, g = batch.gt_mask.shape
        a = g + 7
        boxes = torch.tensor([10.0, 10.0, 40.0, 50.0]).repeat(b, a, 1)  # (B, A, 4) junk
        boxes[:, :g] = batch.gt_boxes
        cls_logits = torch.full((b, a, self.num_classes), -20.0)  # (B, A, C)
        iou_logits = torch.full((b, a), -20.0)  # (B, A)
        rows, cols = batch.gt_mask.nonzero(as_tuple=True)
        cls_logits[rows, cols, batch.gt_labels[rows, cols]] = 20.0
        iou_logits[rows, cols] = 20.0
        points = torch.zeros(a, 2)
        return DenseOutputs(cls_logits, boxes, iou_logits, points, torch.full((a,), 8.0))


class NoisyEcho(GtEcho):
    """GtEcho with its gt boxes jittered and given random scores, plus 30 random boxes of random score
    per image: imperfect detections, fast (no network)."""

    def __init__(self, batches, num_classes: int, seed: int = 0):
        super().__init__(batches, num_classes)
        self.rng = torch.Generator().manual_seed(seed)

    def forward(self, images):
        out = super().forward(images)
        b, g = self.batches[self.calls - 1].gt_mask.shape
        h, w = images.shape[2:]
        size = (out.boxes[:, :g, 2:] - out.boxes[:, :g, :2]).repeat(1, 1, 2)  # (B, G, 4)
        jitter = torch.randn(b, g, 4, generator=self.rng) * torch.rand(b, g, 1, generator=self.rng) * 0.3 * size
        xy = torch.rand(b, 30, 2, generator=self.rng) * torch.tensor([w, h])
        junk = torch.cat((xy, xy + 4 + torch.rand(b, 30, 2, generator=self.rng) * 40), 2)  # (B, 30, 4)
        boxes = torch.cat((out.boxes[:, :g] + jitter, junk), 1)
        cls = torch.cat((out.cls_logits[:, :g], torch.full((b, 30, self.num_classes), -20.0)), 1)
        cls[:, g:, 0] = 20.0
        iou = torch.randn(b, g + 30, generator=self.rng) * 2  # random scores
        a = g + 30
        return DenseOutputs(cls, boxes, iou, torch.zeros(a, 2), torch.full((a,), 8.0))


def test_validate_maps_back_to_original_pixels(loader):
    batches = list(loader)
    assert any(len({tuple(s) for s in input_sizes(bt.orig_sizes, bt.scales).tolist()}) > 1 for bt in batches), (
        "the test wants batches whose images were resized to different sizes (padding differs)"
    )
    assert all(float(s) < 0.7 for bt in batches for s in bt.scales), "every image is resized"
    model = GtEcho(batches, num_classes=4)
    # iou=1.0: NMS keeps crowded same-class gts (the shapes data has pairs with IoU > 0.6).
    metrics = validate(model, loader, iou=1.0, device=torch.device("cpu"), names=["c", "r", "t", "x"], verbose=True)
    assert model.calls == len(batches)
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AP75"] == 1.0
    assert metrics["AR100"] == 1.0
    assert metrics["per_class"] == {"c": 1.0, "r": 1.0, "t": 1.0, "x": 1.0}


def test_input_sizes_match_the_resize(loader):
    """input_sizes recovers each image's unpadded input size from orig_size and scale."""
    dataset = loader.dataset
    for i in range(len(dataset)):
        image, target = dataset[i]
        size = input_sizes(torch.tensor([target["orig_size"]]), torch.tensor([target["scale"]], dtype=torch.float32))
        assert size[0].tolist() == list(image.shape[1:])


def _builtin_yaml(tmp, fmt: str, **extra):
    spec = {"format": fmt, "builtin": "shapes", "path": str(tmp / "shapes"), "train": "images/train", "val": "images/val",
            "generate": {"seed": 4, "num_train": 1, "num_val": 6}, **extra}  # fmt: skip
    file = tmp / f"{fmt}.yaml"
    file.write_text(yaml.safe_dump(spec))
    return file


@pytest.fixture(scope="module")
def format_yamls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val_formats")
    return {
        "crowdhuman": _builtin_yaml(tmp, "crowdhuman", train_annotations="crowdhuman/annotation_train.odgt",
                                    val_annotations="crowdhuman/annotation_val.odgt"),  # fmt: skip
        "yolo": _builtin_yaml(tmp, "yolo", names=["c", "r", "t", "x"]),
    }


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_validate_crowdhuman(format_yamls, tmp_path):
    spec = load_data(format_yamls["crowdhuman"], require=("val",))
    loader = build_dataloader(spec, "val", imgsz=IMGSZ, max_size=MAX_SIZE, batch=4, workers=0, shuffle=False)
    dataset = loader.dataset
    num_gts = len(dataset._boxes)
    assert len(dataset._ignores) > 0, "the scenes have ignore regions"
    save = tmp_path / "detections.odgt"
    log = _Records()
    LOGGER.addHandler(log)
    try:
        metrics = validate(GtEcho(list(loader), 1), loader, iou=1.0, device=torch.device("cpu"), names=["person"], save_json=save)
    finally:
        LOGGER.removeHandler(log)
    # Every normal gt found, nothing else: miss rate 0 everywhere, and the toolkit's AP leaves out
    # the first point's recall, 1/N.
    assert metrics["recall"] == 1.0 and metrics["mMR"] == 0.0
    assert metrics["AP"] == pytest.approx((num_gts - 1) / num_gts, abs=1e-12) and metrics["AP50"] == metrics["AP"]
    assert metrics["images"] == 6 and metrics["instances"] == num_gts
    records = [json.loads(line) for line in save.read_text().splitlines()]
    assert [r["ID"] for r in records] == dataset.odgt_ids and all(d["tag"] == 1 for r in records for d in r["dtboxes"])
    again = crowdhuman.evaluate(dataset.gt_records(), records)
    assert again == {k: metrics[k] for k in ("mMR", "AP", "recall")}
    assert any("MR⁻²" in m and "Recall" in m for m in log.messages), "the CrowdHuman table is printed"
    # Imperfect detections: the returned numbers are the saved file's, scored again.
    metrics = validate(NoisyEcho(list(loader), 1), loader, conf=0.01, iou=0.6, device=torch.device("cpu"), names=["person"],
                       save_json=save, verbose=False)  # fmt: skip
    records = [json.loads(line) for line in save.read_text().splitlines()]
    assert crowdhuman.evaluate(dataset.gt_records(), records) == {k: metrics[k] for k in ("mMR", "AP", "recall")}
    assert crowdhuman.evaluate(dataset.gt_records(), records, 0.75)["AP"] == metrics["AP75"]
    assert 0.1 < metrics["AP"] < 0.9 and 0.1 < metrics["mMR"] < 1.0 and metrics["AP75"] < metrics["AP"]


def test_validate_yolo(format_yamls, tmp_path):
    spec = load_data(format_yamls["yolo"], require=("val",))
    loader = build_dataloader(spec, "val", imgsz=IMGSZ, max_size=MAX_SIZE, batch=4, workers=0, shuffle=False)
    metrics = validate(GtEcho(list(loader), 4), loader, iou=1.0, device=torch.device("cpu"), names=spec.names, verbose=False)
    assert metrics["AP"] == 1.0 and metrics["images"] == 6
    assert metrics["per_class"] == {"c": 1.0, "r": 1.0, "t": 1.0, "x": 1.0}
    # Imperfect detections: the numbers equal pycocotools on the labels written out as a COCO json.
    save_json = tmp_path / "detections.json"
    metrics = validate(NoisyEcho(list(loader), 4), loader, conf=0.01, device=torch.device("cpu"), names=spec.names,
                       save_json=save_json, verbose=False)  # fmt: skip
    assert 0.1 < metrics["AP"] < 0.9
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(loader.dataset.coco_gt().dataset))
    reference = _reference_stats(ann_file, json.loads(save_json.read_text()))
    for key, value in zip(METRIC_KEYS, reference):
        assert abs(metrics[key] - float(value)) <= 1e-12, key
