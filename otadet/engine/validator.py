"""Validation: dense outputs -> NMS -> detections in annotation pixels -> the dataset's benchmark metric.

COCO and YOLO data are scored by pycocotools' COCOeval (YOLO labels as an in-memory COCO
index), CrowdHuman by `otadet.metrics.crowdhuman` (MR⁻², AP, recall). `validate` is what the
trainer calls every epoch and `Detector.val` calls once; `coco_evaluate` is the pycocotools
wrapper. Shapes: B=batch, A=anchor points, C=classes, N=detections.
"""

import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from ..datasets.crowdhuman import is_ignore as crowdhuman_ignored
from ..metrics import crowdhuman
from ..utils.log import LOGGER
from .inference import detect, device_time, to_original
from .precision import InferencePrecision, evaluating, forward, precision_for

__all__ = ["METRIC_KEYS", "CROWDHUMAN_KEYS", "coco_evaluate", "validate", "input_sizes"]

# COCOeval.stats[0..11], in order.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# CrowdHuman: the benchmark's three, plus AP50 (= AP, whose IoU threshold is 0.5) and AP75 (the
# same AP at IoU 0.75) so every dataset gives the trainer the same columns.
CROWDHUMAN_KEYS = ("mMR", "AP", "recall", "AP50", "AP75")


def _run_cocoeval(coco_gt: COCO, detections: list[dict], image_ids: list[int] | None, verbose: bool) -> COCOeval | None:
    """COCOeval (bbox) after evaluate/accumulate/summarize, or None when there is nothing to load."""
    if not detections:
        return None
    unknown = {d["image_id"] for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"detections refer to image ids {sorted(unknown)[:10]} that are not in the ground truth "
            "(pycocotools would assert) — evaluate against the annotation file the images came from"
        )
    sink = sys.stdout if verbose else io.StringIO()  # pycocotools prints its progress and summary
    with contextlib.redirect_stdout(sink):
        # loadRes adds keys (area, id, iscrowd, segmentation) to the dicts it gets: give it copies.
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_evaluate(
    coco_gt: COCO, detections: list[dict], *, image_ids: list[int] | None = None, verbose: bool = True
) -> dict[str, float]:
    """pycocotools bbox metrics of COCO `detections` ({image_id, category_id, bbox xywh, score}).

    Evaluates on `image_ids` (default: every image of `coco_gt`). Returns the 12 floats of
    COCOeval.stats under METRIC_KEYS (AP = AP@[.5:.95]); all zeros when there are no detections
    (pycocotools cannot load an empty result list). Prints COCOeval's summary only if verbose.
    """
    evaluator = _run_cocoeval(coco_gt, detections, image_ids, verbose)
    if evaluator is None:
        return {key: 0.0 for key in METRIC_KEYS}
    return {key: float(value) for key, value in zip(METRIC_KEYS, evaluator.stats)}


def _per_class(evaluator: COCOeval) -> dict[int, dict[str, float]]:
    """COCO category id -> AP, AP50, AP75, APs, APm, APl of that class (nan where it has no gts)."""
    precision = evaluator.eval["precision"]  # (T, R, K, areas, max_dets), -1 where undefined
    iou_thrs = evaluator.params.iouThrs
    t50, t75 = int(np.argmin(np.abs(iou_thrs - 0.5))), int(np.argmin(np.abs(iou_thrs - 0.75)))

    def mean(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else math.nan

    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, :, -1]  # (T, R, areas) at maxDets=100
        out[cat_id] = {
            "AP": mean(p[:, :, 0]),
            "AP50": mean(p[t50, :, 0]),
            "AP75": mean(p[t75, :, 0]),
            "APs": mean(p[:, :, 1]),
            "APm": mean(p[:, :, 2]),
            "APl": mean(p[:, :, 3]),
        }
    return out


def input_sizes(orig_sizes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(B, 2) original (h, w) and (B,) resize factors -> (B, 2) unpadded input (h, w).

    Rounds as transforms.Resize does (round half to even, at least 1), in float64.
    """
    return torch.round(orig_sizes.double() * scales.double()[:, None]).clamp(min=1)  # (B, 2)


def _format_row(name: str, images: int, instances: int, values: dict[str, float]) -> str:
    # '-' where COCOeval has no value (nan per class, -1 overall: no gts of that size).
    cells = "".join(f"{f'{values[k]:.3f}' if values[k] >= 0 else '-':>8}" for k in _TABLE_KEYS)
    return f"{name:>22}{images:>10}{instances:>11}{cells}"


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    conf: float = 0.05,
    iou: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
    device: torch.device,
    names: list[str] | dict[int, str],
    save_json: Path | None = None,
    verbose: bool = True,
    augment: bool = False,
    half: bool = False,
) -> dict:
    """Benchmark metrics of `model` (already on `device`) over `loader` (a DetectionDataset loader).

    Per batch: model -> dense_scores -> nms (clipped to each unpadded input) -> boxes mapped back
    to the annotation's pixels (engine/inference.py, as predict does). Then, on the images seen: COCO/YOLO data -> COCOeval, returning
    METRIC_KEYS floats and 'per_class' {name: AP}; CrowdHuman -> CROWDHUMAN_KEYS floats. Both
    add 'images', 'instances' and 'speed' {preprocess, inference, postprocess} in ms per image,
    and print a table (per class too if verbose). `save_json` writes the detections there: a
    COCO results list, or for CrowdHuman one .odgt-style JSON record per line.
    augment=True: test-time augmentation (engine/tta.py). half=True: FP16 on CUDA, bf16 autocast
    on a CPU with bf16 (an OpenVINO IR: its bf16 hint), scoring and NMS in float32 (engine/precision.py).
    """
    dataset = loader.dataset
    if not hasattr(dataset, "image_size") or not hasattr(dataset, "format"):
        raise TypeError(
            f"validate needs a loader over a DetectionDataset (COCO, CrowdHuman or YOLO reader), got {type(dataset).__name__}; "
            "build it with otadet.datasets.loader.build_dataloader"
        )
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    precision = precision_for(model, half, device)
    thresholds = dict(conf=conf, iou=iou, max_det=max_det, pre_nms_topk=pre_nms_topk)
    with evaluating(model, precision) as input_dtype:
        detections, times = _detect_all(model, loader, precision, input_dtype, device, thresholds, augment)
    speed = {k: 1000 * v / max(len(detections), 1) for k, v in times.items()}
    score = _crowdhuman_metrics if dataset.format == "crowdhuman" else _coco_metrics
    metrics = score(dataset, detections, names=names, save_json=save_json, verbose=verbose)
    LOGGER.info(
        f"Speed: {speed['preprocess']:.1f}ms preprocess, {speed['inference']:.1f}ms inference, "
        f"{speed['postprocess']:.1f}ms postprocess per image ({len(detections)} images)"
    )
    return {**metrics, "speed": speed}


def _detect_all(
    model: nn.Module, loader, precision: InferencePrecision, input_dtype: torch.dtype, device: torch.device, thresholds: dict,
    augment: bool,
) -> tuple[dict[int, torch.Tensor], dict[str, float]]:  # fmt: skip
    """Every image's detections in annotation pixels, image id -> (N, 6) x1 y1 x2 y2 score label
    (float64, unclipped), and the seconds spent on each stage."""
    detections: dict[int, torch.Tensor] = {}
    times = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    bar = tqdm(loader, desc="val", bar_format="{l_bar}{bar:20}{r_bar}", leave=False)
    start = time.perf_counter()
    try:
        for batch in bar:
            batch = batch.to(device)
            t_pre = device_time(device)
            outputs = forward(model, batch.images.to(input_dtype), precision)  # float32 outputs
            t_infer = device_time(device)
            sizes = input_sizes(batch.orig_sizes, batch.scales)  # (B, 2) h, w
            # augment: + 17 scaled/flipped passes, one NMS over all (engine/tta.py); timed as postprocess
            kept = detect(model, batch.images, outputs, sizes, **thresholds, augment=augment)
            for k, dets in enumerate(kept):
                image_id = int(batch.image_ids[k])
                if image_id in detections:  # an unreadable file makes the dataset repeat the next image
                    continue
                # The annotation's size also covers a file of another size.
                annotation_hw = loader.dataset.image_size(image_id)
                detections[image_id] = to_original(dets, sizes[k].tolist(), annotation_hw, dtype=torch.float64, clip=False)
            t_post = time.perf_counter()
            times["preprocess"] += t_pre - start
            times["inference"] += t_infer - t_pre
            times["postprocess"] += t_post - t_infer
            start = time.perf_counter()
    finally:
        bar.close()
    return detections, times


def _save(save_json: Path | None, text: str, count: int) -> None:
    if save_json is None:
        return
    save_json = Path(save_json)
    save_json.parent.mkdir(parents=True, exist_ok=True)
    save_json.write_text(text)
    LOGGER.info(f"{count} detections saved to {save_json}")


def _xywh(dets: torch.Tensor) -> list[list[float]]:
    """(N, 6) xyxy detections -> [x, y, w, h] rounded to 1/1000 px, as saved and scored."""
    xywh = torch.cat((dets[:, :2], dets[:, 2:4] - dets[:, :2]), 1)  # (N, 4) top-left x, y, w, h
    return [[round(v, 3) for v in box] for box in xywh.tolist()]


def _coco_metrics(dataset, detections: dict, *, names: dict, save_json: Path | None, verbose: bool) -> dict:
    """COCOeval on the images seen; the COCO json's own index, or the labels as an in-memory one."""
    coco_gt: COCO = dataset.coco_gt()
    cat_ids = list(getattr(dataset, "cat_ids", range(1, dataset.num_classes + 1)))  # label -> category id
    results = [
        {"image_id": image_id, "category_id": cat_ids[int(label)], "bbox": box, "score": round(s, 5)}
        for image_id, dets in detections.items()
        for box, s, label in zip(_xywh(dets), dets[:, 4].tolist(), dets[:, 5].tolist())
    ]
    _save(save_json, json.dumps(results), len(results))
    image_ids = sorted(detections)
    num_images = len(image_ids)
    gt = [coco_gt.anns[a] for a in coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False)] if num_images else []
    instances = {c: 0 for c in cat_ids}  # category id -> gts in the images seen
    images_with: dict[int, set[int]] = {c: set() for c in cat_ids}
    for ann in gt:
        instances[ann["category_id"]] += 1
        images_with[ann["category_id"]].add(ann["image_id"])

    evaluator = _run_cocoeval(coco_gt, results, image_ids, verbose) if num_images else None
    if evaluator is None:  # no detections at all: every class with gts scores 0
        metrics = {key: 0.0 for key in METRIC_KEYS}
        per_class = {c: {k: 0.0 for k in _TABLE_KEYS} for c, n in instances.items() if n}
    else:
        metrics = {key: float(value) for key, value in zip(METRIC_KEYS, evaluator.stats)}
        per_class = _per_class(evaluator)

    LOGGER.info(f"{'Class':>22}{'Images':>10}{'Instances':>11}" + "".join(f"{k:>8}" for k in _TABLE_KEYS))
    LOGGER.info(_format_row("all", num_images, len(gt), metrics))
    if verbose:
        nan_row = {k: math.nan for k in _TABLE_KEYS}
        for label, cat_id in enumerate(cat_ids):
            row = per_class.get(cat_id, nan_row)
            LOGGER.info(_format_row(str(names.get(label, label)), len(images_with[cat_id]), instances[cat_id], row))
    return {
        **metrics,
        "per_class": {
            str(names.get(label, label)): per_class[cat_id]["AP"]
            for label, cat_id in enumerate(cat_ids)
            if instances[cat_id] and cat_id in per_class
        },
        "images": num_images,
        "instances": len(gt),
    }


def _crowdhuman_metrics(dataset, detections: dict, *, names: dict, save_json: Path | None, verbose: bool) -> dict:
    """CrowdHuman MR⁻², AP, recall (and AP75) on the images seen, from the records that are saved."""
    image_ids = sorted(detections)
    gt_records = dataset.gt_records(image_ids)
    dt_records = [
        {
            "ID": record["ID"], "height": record["height"], "width": record["width"],
            "dtboxes": [{"box": box, "score": round(s, 5), "tag": 1} for box, s in zip(_xywh(dets), dets[:, 4].tolist())],
        }
        for record, dets in zip(gt_records, (detections[i] for i in image_ids))
    ]  # fmt: skip
    _save(save_json, "".join(json.dumps(r) + "\n" for r in dt_records), sum(len(r["dtboxes"]) for r in dt_records))
    metrics = crowdhuman.evaluate(gt_records, dt_records, 0.5, box_key=dataset.box)
    metrics["AP50"] = metrics["AP"]
    metrics["AP75"] = crowdhuman.evaluate(gt_records, dt_records, 0.75, box_key=dataset.box)["AP"]
    entries = [e for r in gt_records for e in r["gtboxes"]]
    ignored = sum(crowdhuman_ignored(e) for e in entries)
    LOGGER.info(f"{'Class':>22}{'Images':>10}{'Instances':>11}{'Ignored':>9}{'MR⁻²':>8}{'AP':>8}{'Recall':>8}{'AP75':>8}")
    LOGGER.info(
        f"{str(names.get(0, 'person')):>22}{len(image_ids):>10}{len(entries) - ignored:>11}{ignored:>9}"
        + "".join(f"{metrics[k]:>8.3f}" for k in ("mMR", "AP", "recall", "AP75"))
    )
    return {**{k: float(metrics[k]) for k in CROWDHUMAN_KEYS}, "images": len(image_ids), "instances": len(entries) - ignored}
