"""End to end on a tiny generated split: train -> checkpoint -> val -> predict -> export (Python API)."""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from otadet import Detector
from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataloader
from otadet.utils.checkpoint import CHECKPOINT_FORMAT

TINY = dict(imgsz=128, max_size=192, batch=4, workers=0, warmup_iters=1, optimizer="adamw", lr0=0.004, weight_decay=0.05)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, write_data_yaml):
    """A data YAML for an 8-train / 4-val split of the built-in generator."""
    root = tmp_path_factory.mktemp("data")
    return write_data_yaml(
        root / "tiny.yaml", path=root / "shapes-tiny", builtin="shapes", generate={"seed": 5, "num_train": 8, "num_val": 4}
    )


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    model = Detector("ota_tiny.yaml", verbose=False)
    metrics = model.train(data=str(tiny_data), epochs=3, project=str(project), **TINY)
    return model, metrics, project / "train" / "exp"


def test_training_writes_checkpoints_and_lowers_the_loss(trained):
    model, metrics, run = trained
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert len(rows) == 3
    losses = [float(r["loss/total"]) for r in rows]
    assert losses[-1] < 0.9 * losses[0], losses
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "weights" / name, map_location="cpu", weights_only=True)
        assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] >= 1
        assert state["names"] == ["circle", "rectangle", "triangle", "cross"]
    assert (run / "args.yaml").is_file() and any(run.glob("events.out.tfevents.*"))
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("AP", "AP50", "AP75"))
    assert model.source == str(run / "weights" / "best.pt")


def test_checkpoint_reloads_to_identical_outputs(trained, tiny_data):
    model, _, run = trained
    again = Detector(run / "weights" / "best.pt", verbose=False)
    assert again.names == model.names and again.train_args["imgsz"] == 128
    batch = next(iter(build_dataloader(load_data(tiny_data), "val", imgsz=128, max_size=192, batch=2, workers=0, shuffle=False)))
    model.net.eval(), again.net.eval()
    with torch.no_grad():
        a, b = model.net(batch.images), again.net(batch.images)
    torch.testing.assert_close(a.cls_logits, b.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)


def test_val_predict_export_from_the_checkpoint(trained, tiny_data, tmp_path):
    _, _, run = trained
    model = Detector(run / "weights" / "best.pt", verbose=False)
    metrics = model.val(project=str(tmp_path), workers=0, batch=2)  # data and imgsz come from the checkpoint
    assert (tmp_path / "val" / "exp" / "metrics.json").is_file()
    assert metrics["images"] == 4

    val_dir = load_data(tiny_data).images("val")
    results = model.predict(val_dir, conf=0.01, save=True, project=str(tmp_path))
    assert len(results) == 4
    assert all(r.boxes.xyxy.shape[1] == 4 and len(r.boxes.conf) == len(r.boxes.cls) for r in results)
    assert len(list((tmp_path / "predict" / "exp").glob("*.jpg"))) == 4

    onnx_file = model.export(format="onnx")
    assert onnx_file == run / "weights" / "best.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        out = model.net.eval()(images)
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_out[..., :4], out.boxes.numpy(), atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(onnx_out[..., 4:], torch.sqrt(out.cls_logits.sigmoid() * out.iou_logits.sigmoid()[..., None]).numpy(), atol=1e-5)


def test_training_survives_a_corrupt_image_and_empty_images(tmp_path, tiny_data):
    """A corrupt image file is skipped with a warning; images with no objects train normally."""
    import json
    import shutil

    spec = load_data(tiny_data)
    root = tmp_path / "broken"
    shutil.copytree(spec.root, root)
    ann = json.loads((root / "annotations/train.json").read_text())
    first = ann["images"][0]["file_name"]
    (root / "images/train" / first).write_bytes(b"not a jpeg")
    empty_id = ann["images"][1]["id"]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] != empty_id]
    (root / "annotations/train.json").write_text(json.dumps(ann))
    data = yaml.safe_load(open(tiny_data))
    data.pop("builtin"), data.pop("generate")
    data["path"] = str(root)
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(data))
    model = Detector("ota_tiny.yaml", verbose=False)
    metrics = model.train(data=str(tmp_path / "broken.yaml"), epochs=1, project=str(tmp_path / "runs"), val=False, **TINY)
    assert np.isfinite(metrics["AP"])
