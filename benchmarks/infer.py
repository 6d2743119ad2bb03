"""Inference latency: PyTorch eager vs TorchScript vs ONNX Runtime, and torchvision's FCOS as reference.

    python benchmarks/infer.py [--device cpu] [--runs 20] [--threads 2] [--models ota_tiny,ota_r50]

Each otadet model runs its exported graph with NMS inside (export nms=True), so the three
backends compute the same thing, images -> detections: the eager InferenceGraph, the traced
TorchScript file and the ONNX file in onnxruntime. ota_tiny runs at its own size (256x352),
ota_r50 at 800x1344 (800x1333 padded to a multiple of 32). The outside reference is
torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None) in eval
mode on the same 800x1333 image (its transform keeps the size and pads to 800x1344), NMS
included. All weights are random (nothing is downloaded); batch 1. Prints the median latency
per image over --runs runs after 3 warm-up runs, and the ratios against the targets
(ONNX Runtime / eager <= 0.7, ota_r50 eager / FCOS <= 1.0).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otadet.config import load_model_config  # noqa: E402
from otadet.engine.backend import ExportedModel  # noqa: E402
from otadet.engine.exporter import InferenceGraph, NMSSettings, export_onnx, export_torchscript  # noqa: E402
from otadet.models.build import build_detector  # noqa: E402
from otadet.utils.log import LOGGER  # noqa: E402

SIZES = {"ota_tiny": (256, 352), "ota_r50": (800, 1344), "ota_r18": (800, 1344)}
NMS = NMSSettings(conf=0.4, iou=0.6, max_det=100)  # predict's defaults
WARMUP = 3


def _median_ms(fn, runs: int, device: torch.device) -> float:
    times = []
    for i in range(WARMUP + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def bench_otadet(name: str, device: torch.device, runs: int, threads: int, folder: Path) -> dict:
    h, w = SIZES[name]
    torch.manual_seed(0)
    net = build_detector(load_model_config(f"{name}.yaml"), 80).eval()
    metadata = {"names": [f"class{i}" for i in range(80)], "model": name}
    LOGGER.info(f"{name}: exporting ONNX and TorchScript (NMS inside) ...")
    onnx_file = export_onnx(net, file=folder / f"{name}.onnx", imgsz=min(h, w), nms=NMS, metadata=metadata)
    ts_file = export_torchscript(net, file=folder / f"{name}.torchscript", imgsz=min(h, w), nms=NMS, metadata=metadata)
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    graph = InferenceGraph(net.to(device), nms=NMS).eval()
    ort_model = ExportedModel(onnx_file, threads=threads).to(device)
    ts_model = ExportedModel(ts_file).to(device)
    with torch.no_grad():
        eager = _median_ms(lambda: graph(images), runs, device)
        torchscript = _median_ms(lambda: ts_model.run(images), runs, device)
        onnxruntime = _median_ms(lambda: ort_model.run(images), runs, device)
    LOGGER.info(f"{name} {h}x{w}: eager {eager:.1f} ms, TorchScript {torchscript:.1f} ms, ONNX Runtime {onnxruntime:.1f} ms")
    return {"model": name, "input": f"{h}x{w}", "eager": eager, "torchscript": torchscript, "onnxruntime": onnxruntime,
            "providers": ",".join(ort_model.providers)}  # fmt: skip


def bench_fcos(device: torch.device, runs: int) -> dict:
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None).eval().to(device)
    image = torch.rand(3, 800, 1333, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        eager = _median_ms(lambda: model([image]), runs, device)
    return {"model": "torchvision fcos_resnet50_fpn", "input": "800x1333 (padded 800x1344)", "eager": eager}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (onnxruntime uses its CUDA provider when present)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend after 3 warm-up runs (>= 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--models", default="ota_tiny,ota_r50", help="comma list of otadet models")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_otadet(name, device, args.runs, args.threads, Path(tmp)))
    fcos = bench_fcos(device, args.runs)

    print(f"\n`python benchmarks/infer.py --device {args.device} --runs {args.runs} --threads {args.threads} --models {args.models}`")
    print(f"torch {torch.__version__}, device {device}, {args.threads} threads, batch 1, median of {args.runs} runs\n")
    print("| model | input | PyTorch eager (ms) | TorchScript (ms) | ONNX Runtime (ms) | ORT / eager (target <= 0.7) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['eager']:.1f} | {r['torchscript']:.1f} | {r['onnxruntime']:.1f} "
              f"| {r['onnxruntime'] / r['eager']:.2f} |")  # fmt: skip
    print(f"| {fcos['model']} | {fcos['input']} | {fcos['eager']:.1f} | - | - | - |")
    r50 = next((r for r in rows if r["model"] == "ota_r50"), None)
    if r50 is not None:
        print(f"\nota_r50 eager / torchvision FCOS eager: {r50['eager'] / fcos['eager']:.2f} (target <= 1.0)")
    print(f"onnxruntime providers: {rows[0]['providers']}")


if __name__ == "__main__":
    main()
