"""Inference precision on the CPU (issue 14): latency per backend and precision, and what each costs in accuracy.

    python benchmarks/precision.py --weights runs/train/demo/weights/best.pt      # ~15 min on 2 cores
    python benchmarks/precision.py --models ota_tiny --skip-accuracy              # latency only

Rows: PyTorch eager fp32 and bf16 (autocast; `half=True` on a bf16 CPU), ONNX Runtime fp32 and
int8 (QDQ, `export int8=True`), OpenVINO fp32, bf16 (`half=True`) and int8 (nncf). Every row
runs the same dense graph, images -> boxes ++ scores (no NMS inside: the int8 paths keep NMS
outside the graph), batch 1, --threads threads.

Latency: random weights (speed does not depend on them; int8 calibrates on the built-in shapes
train images), ota_tiny at 256x352 and ota_r50 at 800x1344, median over --runs rounds after 3
warm-up rounds, every backend once per round in turn after --pause s idle (benchmarks/infer.py's
protocol), and the ratio to fp32 eager.

Accuracy: with --weights (a trained ota_tiny, e.g. the demo's best.pt) COCO AP/AP50 on the
built-in shapes val split through Detector.val for each row (export, then val of the exported
file), and the change against fp32 eager. For ota_r50 (random weights, no trained model here)
the agreement of the dense scores with fp32 eager on one val image: max |score difference|, and
the share of fp32's 100 highest (anchor, class) scores also among the row's 100 highest.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otadet import Detector  # noqa: E402
from otadet.config import load_model_config  # noqa: E402
from otadet.engine.backend import ExportedModel  # noqa: E402
from otadet.engine.exporter import InferenceGraph  # noqa: E402
from otadet.models.build import build_detector  # noqa: E402
from otadet.utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint  # noqa: E402
from otadet.utils.log import LOGGER  # noqa: E402
from otadet.utils.torch_utils import cpu_bf16_supported  # noqa: E402

SIZES = {"ota_tiny": (256, 352), "ota_r50": (800, 1344)}
ROWS = ("eager fp32", "eager bf16", "ORT fp32", "ORT int8", "OpenVINO fp32", "OpenVINO bf16", "OpenVINO int8")
WARMUP = 3
DATA = "shapes.yaml"


def _random_checkpoint(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = load_model_config(f"{name}.yaml")
    net = build_detector(cfg, 4)
    state = {"format": CHECKPOINT_FORMAT, "model_cfg": cfg.to_dict(), "names": ["circle", "rectangle", "triangle", "cross"],
             "model": net.state_dict()}  # fmt: skip
    return save_checkpoint(state, folder / f"{name}.pt")


def _exports(checkpoint: Path, h: int, w: int) -> dict[str, Path]:
    """The exported files of every row that needs one, beside `checkpoint`."""
    detector = Detector(str(checkpoint), verbose=False)
    size = dict(imgsz=min(h, w), max_size=max(h, w), data=DATA, verbose=False)
    onnx = detector.export(format="onnx", **size)
    return {
        "ORT fp32": onnx,
        "ORT int8": detector.export(format="onnx", int8=True, **size),
        "OpenVINO fp32": detector.export(format="openvino", **size),
        "OpenVINO int8": detector.export(format="openvino", int8=True, **size),
    }


def _runners(checkpoint: Path, files: dict[str, Path], threads: int, bf16: bool) -> dict:
    """Row -> (callable images -> (B, A, 4 + C)) for the rows this CPU can run."""
    from otadet.engine.openvino_ir import OpenVINOModel

    net = Detector(str(checkpoint), verbose=False).net.eval().to(memory_format=torch.channels_last)
    graph = InferenceGraph(net, nms=None).eval()

    def eager_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return graph(x).float()

    runners = {"eager fp32": graph, "ORT fp32": ExportedModel(files["ORT fp32"], threads=threads).run,
               "ORT int8": ExportedModel(files["ORT int8"], threads=threads).run,
               "OpenVINO fp32": OpenVINOModel(files["OpenVINO fp32"], threads=threads).run,
               "OpenVINO int8": OpenVINOModel(files["OpenVINO int8"], threads=threads).run}  # fmt: skip
    if bf16:
        runners["eager bf16"] = eager_bf16
        runners["OpenVINO bf16"] = OpenVINOModel(files["OpenVINO fp32"], threads=threads, half=True).run
    return {row: runners[row] for row in ROWS if row in runners}


def _medians(fns: dict, images: torch.Tensor, runs: int, pause: float) -> dict[str, float]:
    times = {row: [] for row in fns}
    for i in range(WARMUP + runs):
        for row, fn in fns.items():
            time.sleep(pause)  # no runtime's spinning worker threads slow the next one (infer.py)
            start = time.perf_counter()
            fn(images)
            if i >= WARMUP:
                times[row].append(1000 * (time.perf_counter() - start))
    return {row: statistics.median(t) for row, t in times.items()}


def _agreement(fns: dict, image: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Row -> (max |score - fp32 score|, share of fp32's top-100 (anchor, class) scores in the row's top-100)."""
    ref = fns["eager fp32"](image)[0, :, 4:].flatten()
    top = set(ref.topk(100).indices.tolist())
    out = {}
    for row, fn in fns.items():
        scores = fn(image)[0, :, 4:].flatten()
        out[row] = ((scores - ref).abs().max().item(), len(top & set(scores.topk(100).indices.tolist())) / 100)
    return out


def _val_image(h: int, w: int) -> torch.Tensor:
    """The first built-in val image, preprocessed as val does and zero-padded to h x w."""
    from otadet.datasets.data_yaml import load_data
    from otadet.datasets.loader import build_dataloader

    loader = build_dataloader(load_data(DATA), "val", imgsz=min(h, w), max_size=max(h, w), batch=1, workers=0, shuffle=False)
    image = next(iter(loader)).images
    return torch.nn.functional.pad(image, (0, w - image.shape[-1], 0, h - image.shape[-2]))


def _accuracy(weights: Path, bf16: bool) -> dict[str, dict]:
    """Row -> Detector.val metrics on the built-in val split, for the trained `weights`."""
    detector = Detector(str(weights), verbose=False)
    size = dict(imgsz=256, max_size=352)
    files = {"ORT fp32": detector.export(format="onnx", **size), "ORT int8": detector.export(format="onnx", int8=True, data=DATA, **size),
             "OpenVINO fp32": detector.export(format="openvino", **size),
             "OpenVINO int8": detector.export(format="openvino", int8=True, data=DATA, **size)}  # fmt: skip
    val = dict(data=DATA, batch=8, workers=0, verbose=False, save_json=False, **size)
    out = {"eager fp32": detector.val(**val)}
    if bf16:
        out["eager bf16"] = detector.val(half=True, **val)
    for row in ("ORT fp32", "ORT int8", "OpenVINO fp32", "OpenVINO int8"):
        out[row] = Detector(str(files[row]), verbose=False).val(**val)
    if bf16:
        out["OpenVINO bf16"] = Detector(str(files["OpenVINO fp32"]), verbose=False).val(half=True, **val)
    return {row: out[row] for row in ROWS if row in out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ota_tiny,ota_r50")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--weights", help="a trained ota_tiny checkpoint for the accuracy table (the demo's best.pt)")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = cpu_bf16_supported()
    folder = Path(tempfile.mkdtemp(prefix="otadet-precision-"))
    latency, agreement = {}, {}
    with torch.no_grad():
        for name in args.models.split(","):
            h, w = SIZES[name]
            checkpoint = _random_checkpoint(name, folder)
            LOGGER.info(f"{name}: exporting fp32, int8 (ONNX, OpenVINO) ...")
            fns = _runners(checkpoint, _exports(checkpoint, h, w), args.threads, bf16)
            images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            LOGGER.info(f"{name}: timing {len(fns)} rows, {WARMUP} + {args.runs} rounds ...")
            latency[name] = _medians(fns, images, args.runs, args.pause)
            agreement[name] = _agreement(fns, _val_image(h, w))
    accuracy = _accuracy(Path(args.weights), bf16) if args.weights and not args.skip_accuracy else {}

    print(f"\n`python benchmarks/precision.py --models {args.models} --runs {args.runs} --threads {args.threads}"
          + (f" --weights {args.weights}`" if args.weights else "`"))  # fmt: skip
    print(f"torch {torch.__version__}, CPU bf16 arithmetic: {bf16}, batch 1, {args.threads} threads, median of {args.runs} rounds\n")
    names = list(latency)
    print("| row | " + " | ".join(f"{n} {SIZES[n][0]}x{SIZES[n][1]}: ms (speed-up over fp32 eager)" for n in names) + " | max abs score diff / top-100 overlap (" + names[-1] + ") |")
    print("|---|" + "---|" * (len(names) + 1))
    for row in ROWS:
        if row not in latency[names[0]]:
            continue
        cells = [f"{latency[n][row]:.1f} ({latency[n]['eager fp32'] / latency[n][row]:.2f}x)" for n in names]
        diff, overlap = agreement[names[-1]][row]
        print(f"| {row} | " + " | ".join(cells) + f" | {diff:.4f} / {overlap:.2f} |")
    if accuracy:
        base = accuracy["eager fp32"]
        print(f"\nAccuracy of {args.weights} on the built-in shapes val split (200 images), COCO AP via pycocotools:\n")
        print("| row | AP | AP50 | AP - fp32 eager AP |")
        print("|---|---|---|---|")
        for row, m in accuracy.items():
            print(f"| {row} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['AP'] - base['AP']:+.4f} |")


if __name__ == "__main__":
    main()
