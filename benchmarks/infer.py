"""Inference latency: PyTorch eager vs TorchScript vs ONNX Runtime, and torchvision's FCOS as reference.

    python benchmarks/infer.py [--device cpu] [--runs 20] [--threads 2] [--models ota_tiny,ota_r50]

Each otadet model runs its exported graph with NMS inside (export nms=True), so the three
backends compute the same thing, images -> detections: the eager InferenceGraph, the traced
TorchScript file and the ONNX file in onnxruntime. ota_tiny runs at its own size (256x352),
ota_r50 at 800x1344 (800x1333 padded to a multiple of 32). The outside reference is
torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None) in eval
mode on the same 800x1333 image (its transform keeps the size and pads to 800x1344), NMS
included. All weights are random (nothing is downloaded); batch 1. Prints the median latency
per image over --runs rounds after 3 warm-up rounds (each round runs every model and backend
once, in turn, so load changes reach all alike, each after --pause seconds of idle so that
no runtime's spinning worker threads slow the next one), and the ratios against the targets
(ONNX Runtime / eager <= 0.7, ota_r50 eager / FCOS <= 1.0).

The floor table (CPU): onnxruntime's own profiler splits its time by operator; the
convolutions' share, over the model's convolution FLOPs (torch.utils.flop_counter), gives the
rate ORT's convolutions run at, next to the rate of one large 3x3 convolution alone in PyTorch
(256 -> 256 channels at 100x168, a P3 head layer at 800x1344: the best this CPU does).
ORT conv time / eager time is the lowest ORT / eager ratio reachable if everything but the
convolutions cost nothing.
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


def _interleaved_medians(fns: dict, runs: int, device: torch.device, pause: float) -> dict:
    """Median ms of each callable over `runs` rounds after WARMUP rounds. Each round calls every
    callable once, in turn, so a change of machine load reaches all of them alike. Each call
    starts `pause` seconds after the last one ended: onnxruntime's and PyTorch's (OpenMP) worker
    threads spin for a while after their work, and a runtime started while the other's spin
    shares the cores with them (on 2 cores: ota_tiny eager 36 -> 80 ms after an ORT call, ORT
    24 -> 34 ms after a PyTorch one), which no deployment running one runtime sees."""
    times = {name: [] for name in fns}
    for i in range(WARMUP + runs):
        for name, fn in fns.items():
            time.sleep(pause)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= WARMUP:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def otadet_backends(name: str, device: torch.device, threads: int, folder: Path) -> dict:
    """{'eager', 'torchscript', 'onnxruntime'} -> a callable running `name` on one random image."""
    h, w = SIZES[name]
    torch.manual_seed(0)
    net = build_detector(load_model_config(f"{name}.yaml"), 80).eval()
    metadata = {"names": [f"class{i}" for i in range(80)], "model": name}
    LOGGER.info(f"{name}: exporting ONNX and TorchScript (NMS inside) ...")
    onnx_file = export_onnx(net, file=folder / f"{name}.onnx", imgsz=min(h, w), nms=NMS, metadata=metadata)
    # A traced archive keeps the device it was traced on (its anchor grid is a constant there).
    ts_file = export_torchscript(net.to(device), file=folder / f"{name}.torchscript", imgsz=min(h, w), nms=NMS, metadata=metadata)
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    graph = InferenceGraph(net.to(device, memory_format=torch.channels_last), nms=NMS).eval()  # as Detector.predict runs it
    ort_model = ExportedModel(onnx_file, threads=threads).to(device)
    ts_model = ExportedModel(ts_file).to(device)
    LOGGER.info(f"onnxruntime providers: {', '.join(ort_model.providers)}")
    return {"eager": lambda: graph(images), "torchscript": lambda: ts_model.run(images), "onnxruntime": lambda: ort_model.run(images)}


def conv_gflop(name: str) -> float:
    """GFLOPs of the convolutions in one forward of `name` at its benchmark size."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = SIZES[name]
    net = build_detector(load_model_config(f"{name}.yaml"), 80).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, h, w))
    counts = counter.get_flop_counts()["Global"]
    return sum(n for op, n in counts.items() if "convolution" in str(op)) / 1e9


def ort_conv_ms(onnx_file: Path, name: str, threads: int, runs: int) -> float:
    """Mean ms per run that onnxruntime's profiler puts on convolution kernels (Conv, FusedConv, NCHWc Conv)."""
    import json

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_file.with_suffix(""))
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, *SIZES[name]), np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    conv_us = sum(
        e["dur"] for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and "Conv" in e["args"].get("op_name", "")
    )  # fmt: skip
    return conv_us / 1000 / runs


def lone_conv_gflops(device: torch.device) -> float:
    """GFLOP/s of one 3x3 256->256 convolution at 100x168 (channels_last), best of 5."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(1, 256, 100, 168, device=device).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return 2 * 100 * 168 * 256 * 256 * 9 / best / 1e9


def fcos_backend(device: torch.device):
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None).eval().to(device)
    image = torch.rand(3, 800, 1333, generator=torch.Generator().manual_seed(0)).to(device)
    return lambda: model([image])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (onnxruntime uses its CUDA provider when present)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend after 3 warm-up runs (>= 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--models", default="ota_tiny,ota_r50", help="comma list of otadet models")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds of idle before each timed call (0: back to back)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    tmp = tempfile.TemporaryDirectory()
    with torch.no_grad():
        fns = {(name, backend): fn for name in names for backend, fn in otadet_backends(name, device, args.threads, Path(tmp.name)).items()}
        fns[("fcos", "eager")] = fcos_backend(device)
        LOGGER.info(f"timing {len(fns)} model/backend pairs, interleaved, {WARMUP} + {args.runs} rounds ...")
        ms = _interleaved_medians(fns, args.runs, device, args.pause)
    files = {name: Path(tmp.name) / f"{name}.onnx" for name in names}

    print(f"\n`python benchmarks/infer.py --device {args.device} --runs {args.runs} --threads {args.threads} --models {args.models} "
          f"--pause {args.pause}`")
    print(f"torch {torch.__version__}, device {device}, {args.threads} threads, batch 1, median of {args.runs} runs\n")
    print("| model | input | PyTorch eager (ms) | TorchScript (ms) | ONNX Runtime (ms) | ORT / eager (target <= 0.7) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        h, w = SIZES[name]
        eager, ts, ort_ms = ms[(name, "eager")], ms[(name, "torchscript")], ms[(name, "onnxruntime")]
        print(f"| {name} | {h}x{w} | {eager:.1f} | {ts:.1f} | {ort_ms:.1f} | {ort_ms / eager:.3f} |")
    print(f"| torchvision fcos_resnet50_fpn | 800x1333 (padded 800x1344) | {ms[('fcos', 'eager')]:.1f} | - | - | - |")
    if "ota_r50" in names:
        print(f"\nota_r50 eager / torchvision FCOS eager: {ms[('ota_r50', 'eager')] / ms[('fcos', 'eager')]:.2f} (target <= 1.0)")
    if device.type == "cpu":
        print(f"\nOne 3x3 256->256 convolution at 100x168 alone in PyTorch: {lone_conv_gflops(device):.0f} GFLOP/s\n")
        print("| model | conv GFLOP | ORT conv time (ms) | ORT conv GFLOP/s | ORT / eager if only the convolutions cost |")
        print("|---|---|---|---|---|")
        for name in names:
            gflop, conv_ms = conv_gflop(name), ort_conv_ms(files[name], name, args.threads, max(5, args.runs // 4))
            print(f"| {name} | {gflop:.1f} | {conv_ms:.1f} | {gflop / conv_ms * 1e3:.0f} | {conv_ms / ms[(name, 'eager')]:.2f} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
