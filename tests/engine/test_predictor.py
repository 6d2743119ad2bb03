"""Predictor and Results: every kind of source gives the same detections, boxes come back in
original-image pixels (hand-computed for a fake network), files are written, errors name paths."""

import inspect
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from otadet.engine.predictor import predict, resolve_sources
from otadet.engine.results import Boxes, Results, class_colour
from otadet.models.detector import DenseOutputs
from tiny_run import perturbed_tiny
from otadet.utils.log import LOGGER

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Three small images of different sizes with filled shapes, plus a non-image file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.jpg", (120, 180)), ("b.png", (150, 100)), ("c.jpg", (96, 96))):
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(4):
            x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
            colour = tuple(int(v) for v in rng.integers(100, 255, 3))
            cv2.rectangle(image, (x, y), (x + int(rng.integers(10, 30)), y + int(rng.integers(10, 30))), colour, -1)
        cv2.imwrite(str(folder / name), image)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return perturbed_tiny()


def _run(model, source, **kw):
    args = dict(imgsz=64, max_size=96, conf=0.05, device=CPU, names=["circle", "square", "cross"])
    return predict(model, source, **{**args, **kw})


def test_every_source_kind_gives_the_same_detections(model, image_dir):
    from_dir = _run(model, image_dir)  # notes.txt is not an image: left out
    assert [Path(r.path).name for r in from_dir] == ["a.jpg", "b.png", "c.jpg"]
    by_file = {Path(r.path).name: r for r in from_dir}
    assert all(len(r) > 0 for r in from_dir), "the perturbed model detects something at conf 0.05"

    def same(result: Results, name: str):
        assert torch.equal(result.boxes.data, by_file[name].boxes.data), name
        assert result.orig_shape == by_file[name].orig_shape

    array = cv2.imread(str(image_dir / "a.jpg"))
    (from_array,) = _run(model, array)
    assert from_array.path == "image0.jpg"
    same(from_array, "a.jpg")
    (from_path,) = _run(model, image_dir / "b.png")
    same(from_path, "b.png")
    from_glob = _run(model, str(image_dir / "*.jpg"))
    assert [Path(r.path).name for r in from_glob] == ["a.jpg", "c.jpg"]
    for r in from_glob:
        same(r, Path(r.path).name)
    mixed = _run(model, [array, str(image_dir / "c.jpg"), cv2.imread(str(image_dir / "b.png"))])
    assert [r.path for r in mixed] == ["image0.jpg", str(image_dir / "c.jpg"), "image1.jpg"]
    for r, name in zip(mixed, ["a.jpg", "c.jpg", "b.png"]):
        same(r, name)
    # Batches keep the order; padding to the batch's size may move scores near the borders a little.
    batched = _run(model, str(image_dir / "*.jpg"), batch=2)
    assert [Path(r.path).name for r in batched] == ["a.jpg", "c.jpg"]


def test_boxes_are_clipped_and_classes_filtered(model, image_dir):
    (every,) = _run(model, image_dir / "a.jpg", conf=0.01)
    h, w = every.orig_shape
    xyxy = every.boxes.xyxy
    assert (xyxy >= 0).all() and (xyxy[:, [0, 2]] <= w).all() and (xyxy[:, [1, 3]] <= h).all()
    assert (xyxy[:, [2, 3]] == torch.tensor([w, h], dtype=xyxy.dtype)).any(), "some boxes were clipped at the far edges"
    (only,) = _run(model, image_dir / "a.jpg", conf=0.01, classes=[1])
    assert len(only) > 0 and set(only.boxes.cls.tolist()) == {1.0}
    assert set(every.boxes.cls.tolist()) > {1.0}


class FixedBoxes(nn.Module):
    """A fake network with three anchors: two boxes in input pixels with known classes and scores,
    and one below any threshold. Records the input shapes it sees."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, images):
        self.shapes.append(tuple(images.shape))
        b = images.shape[0]
        boxes = torch.tensor([[10.0, 20.0, 60.0, 70.0], [120.0, 50.0, 170.0, 90.0], [0.0, 0.0, 5.0, 5.0]])
        cls_logits = torch.tensor([[4.0, -9.0], [-9.0, 2.0], [-9.0, -9.0]])  # (A, C)
        iou_logits = torch.tensor([3.0, 1.0, -9.0])  # (A,)
        return DenseOutputs(
            cls_logits.expand(b, -1, -1), boxes.expand(b, -1, -1), iou_logits.expand(b, -1),
            torch.zeros(3, 2), torch.full((3,), 8.0),
        )  # fmt: skip


def test_boxes_map_back_to_original_pixels():
    """A 301x200 (w x h) image at imgsz=100: scale 0.5, input 150 wide (150.5 rounds to even)
    and 100 high, padded to 160x128. Boxes scale back by 301/150 and 200/100."""
    image = np.full((200, 301, 3), 127, np.uint8)
    net = FixedBoxes()
    (result,) = predict(net, image, imgsz=100, max_size=1000, conf=0.25, device=CPU, names=["circle", "cross"])
    assert net.shapes == [(1, 3, 128, 160)]
    sx, sy = 301 / 150, 200 / 100
    # Box 1 lies inside the input; box 2 reaches past the input's right edge (150): clipped there.
    expected = torch.tensor(
        [
            [10 * sx, 20 * sy, 60 * sx, 70 * sy],
            [120 * sx, 50 * sy, 150 * sx, 90 * sy],  # x2 = 150 * 301 / 150 = 301, the image edge
        ]
    )
    assert torch.allclose(result.boxes.xyxy, expected, atol=1e-4), result.boxes.xyxy
    sig = torch.sigmoid
    scores = torch.sqrt(sig(torch.tensor([4.0, 2.0])) * sig(torch.tensor([3.0, 1.0])))  # box 1 class 0, box 2 class 1
    assert torch.allclose(result.boxes.conf, scores, atol=1e-6)
    assert result.boxes.cls.tolist() == [0.0, 1.0]
    assert result.boxes.xyxy[1, 2].item() == pytest.approx(301.0)
    assert torch.allclose(result.boxes.xywh[0], torch.tensor([35 * sx, 45 * sy, 50 * sx, 50 * sy]), atol=1e-4)
    assert result.verbose() == "1 circle, 1 cross"
    assert result.to_json()[1]["name"] == "cross" and result.to_json()[1]["box"]["x2"] == pytest.approx(301.0)


def test_save_writes_annotated_images(model, image_dir, tmp_path):
    array = cv2.imread(str(image_dir / "b.png"))
    net = FixedBoxes()
    results = predict(
        net, [image_dir, array], imgsz=100, max_size=1000, conf=0.25, device=CPU, names=["circle", "cross"],
        save=True, save_dir=tmp_path / "out",
    )  # fmt: skip
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a.jpg", "b.png", "c.jpg", "image0.jpg"]
    saved = cv2.imread(str(tmp_path / "out" / "b.png"))
    original = cv2.imread(str(image_dir / "b.png"))
    assert saved.shape == original.shape and not np.array_equal(saved, original)
    plotted = results[0].plot()
    assert plotted.shape == results[0].orig_img.shape and not np.array_equal(plotted, results[0].orig_img)
    # The first box (class 0) is drawn in its class colour.
    x1, y1 = (int(round(v)) for v in results[0].boxes.xyxy[0, :2].tolist())
    assert tuple(int(v) for v in plotted[y1 + 10, x1]) == class_colour(0)


def test_missing_and_unreadable_sources(image_dir, tmp_path):
    missing = tmp_path / "nope" / "x.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        resolve_sources([str(image_dir / "a.jpg"), missing])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "*.png"))):
        resolve_sources(str(tmp_path / "*.png"))
    with pytest.raises(ValueError, match="uint8"):
        resolve_sources(np.zeros((8, 8, 3), np.float32))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        results = predict(FixedBoxes(), [bad, image_dir / "c.jpg"], imgsz=64, max_size=96, device=CPU, names=["a", "b"])
    finally:
        LOGGER.removeHandler(handler)
    assert [Path(r.path).name for r in results] == ["c.jpg"]
    assert any(str(bad) in m and "skipped" in m for m in messages)
    assert any(m.startswith("image 1/2 ") and "c.jpg: 64x64 " in m for m in messages)
    assert any(m.startswith("Speed: ") for m in messages)


def test_results_repr_and_plural():
    data = torch.tensor([[0, 0, 4, 4, 0.9, 0], [1, 1, 5, 5, 0.8, 1], [2, 2, 6, 6, 0.7, 1], [0, 0, 2, 2, 0.6, 2]])
    boxes = Boxes(data, orig_shape=(10, 10))
    r = Results(orig_img=np.zeros((10, 10, 3), np.uint8), path="x.jpg", names=["circle", "cross", "box"], boxes=boxes)
    assert r.verbose() == "1 circle, 2 crosses, 1 box"
    assert repr(r) == "Results('x.jpg', 10x10: 1 circle, 2 crosses, 1 box)"
    assert len(r) == 4 and len(r.boxes) == 4
    no_boxes = Boxes(torch.zeros(0, 6), orig_shape=(4, 4))
    empty = Results(orig_img=np.zeros((4, 4, 3), np.uint8), path="e.jpg", names=["a"], boxes=no_boxes)
    assert empty.verbose() == "(no detections)" and empty.to_json() == []
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        Boxes(torch.zeros(3, 4), orig_shape=(4, 4))


# ----------------------------------------------------------------------------- sources (issue 5)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 5.0) -> Path:
    """A short video with cv2: mp4 (mp4v) if this OpenCV build encodes it, else avi (MJPG)."""
    h, w = frames[0].shape[:2]
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        file = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(file), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
        if writer.isOpened():
            for frame in frames:
                writer.write(frame)
            writer.release()
            capture = cv2.VideoCapture(str(file))
            readable = capture.isOpened() and capture.read()[0]
            capture.release()
            if readable:
                return file
        writer.release()
    pytest.skip("this OpenCV build can neither write mp4 (mp4v) nor avi (MJPG)")


def test_video_gives_one_result_per_frame_and_an_annotated_video(model, image_dir, tmp_path):
    frames = [cv2.resize(cv2.imread(str(image_dir / n)), (96, 64)) for n in ("a.jpg", "b.png", "c.jpg", "a.jpg")]
    video = _write_video(tmp_path / "clip", frames)
    out = tmp_path / "out"
    stream = _stream(model, video, save=True, save_txt=True, save_dir=out)
    assert inspect.isgenerator(stream)
    results = list(stream)
    assert [r.frame for r in results] == [0, 1, 2, 3] and all(r.path == str(video) for r in results)
    assert all(r.orig_shape == (64, 96) for r in results)
    # Frames 0 and 3 are the same picture: the same detections (up to the codec, lossy).
    assert len(results[0]) > 0 and abs(len(results[0]) - len(results[3])) <= 2
    written = sorted(p.name for p in out.iterdir())
    assert written[0] == f"clip{video.suffix}" and "labels" in written
    capture = cv2.VideoCapture(str(out / f"clip{video.suffix}"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 4 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    capture.release()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i}.txt" for i in range(4)]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    assert list(_stream(model, bad)) == []  # skipped with a warning, as an unreadable image is
    assert len(list(_stream(model, [bad, video]))) == 4


def _stream(model, source, **kw):
    from otadet.engine.predictor import iter_predict

    args = dict(imgsz=64, max_size=96, conf=0.05, device=CPU, names=["circle", "square", "cross"])
    return iter_predict(model, source, **{**args, **kw})


def test_pil_and_txt_list_sources(model, image_dir, tmp_path):
    from PIL import Image

    (from_file,) = _run(model, image_dir / "b.png")
    pil = Image.open(image_dir / "b.png")
    (from_pil,) = _run(model, pil)
    assert from_pil.path == "image0.jpg" and torch.equal(from_pil.boxes.data, from_file.boxes.data)
    listing = tmp_path / "list.txt"
    # Relative to the list's folder, absolute, and a folder; blank lines and comments skipped.
    (tmp_path / "c.jpg").write_bytes((image_dir / "c.jpg").read_bytes())
    listing.write_text(f"c.jpg\n\n# a comment\n{image_dir / 'b.png'}\n{image_dir}\n")
    results = _run(model, listing)
    assert [Path(r.path).name for r in results] == ["c.jpg", "b.png", "a.jpg", "b.png", "c.jpg"]
    assert torch.equal(results[1].boxes.data, from_file.boxes.data)
    listing.write_text("missing.jpg\n")
    with pytest.raises(FileNotFoundError, match="line 1: missing.jpg"):
        resolve_sources(listing)
    assert resolve_sources(0)[0].kind == "webcam" and resolve_sources("1")[0].index == 1
    with pytest.raises(TypeError, match="PIL image"):
        resolve_sources(3.5)


def test_stream_is_lazy_and_saves_labels_and_json(model, image_dir, tmp_path):
    import json

    out = tmp_path / "out"
    stream = _stream(model, image_dir, save_txt=True, save_conf=True, save_json=True, save_dir=out, classes=[0, 2])
    first = next(stream)  # one image read and predicted; nothing else yet
    assert Path(first.path).name == "a.jpg" and not (out / "labels" / "b.txt").exists()
    rest = list(stream)
    results = [first, *rest]
    assert all(set(r.boxes.cls.tolist()) <= {0.0, 2.0} for r in results)
    for r in results:
        lines = (out / "labels" / f"{Path(r.path).stem}.txt").read_text().splitlines()
        assert len(lines) == len(r)
        h, w = r.orig_shape
        for line, (xc, yc, bw, bh), score, cls in zip(lines, r.boxes.xywh.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            values = [float(v) for v in line.split()]
            assert values[0] == cls and values[5] == pytest.approx(score, abs=1e-5)
            assert values[1:5] == pytest.approx([xc / w, yc / h, bw / w, bh / h], abs=1e-6)
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == sum(len(r) for r in results)
    x1, y1, x2, y2, score, cls = results[0].boxes.data[0].tolist()
    assert rows[0]["file_name"] == results[0].path and rows[0]["category_id"] == int(cls)
    assert rows[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3) and rows[0]["score"] == pytest.approx(score, abs=1e-5)
    with pytest.raises(ValueError, match="classes=\\[7\\]"):
        next(_stream(model, image_dir, classes=[7]))


def test_cli_predict_streams(model, image_dir, tmp_path, monkeypatch):
    """`otadet predict` consumes Detector.predict(stream=True) and writes the annotated images."""
    from otadet import cli
    from otadet.engine.model import Detector

    seen = {}
    real = Detector.predict

    def spy(self, source=None, **kwargs):
        seen.update(kwargs)
        self.net = model
        self.names = ["circle", "square", "cross"]
        out = real(self, source, **kwargs)
        seen["generator"] = inspect.isgenerator(out)
        return out

    monkeypatch.setattr(Detector, "predict", spy)
    code = cli.main(["predict", "model=ota_tiny.yaml", f"source={image_dir}", "imgsz=64", "max_size=96", "conf=0.05",
                     f"project={tmp_path}", "device=cpu"])  # fmt: skip
    assert code == 0 and seen["stream"] is True and seen["generator"]
    assert sorted(p.name for p in (tmp_path / "predict" / "exp").iterdir()) == ["a.jpg", "b.png", "c.jpg"]
