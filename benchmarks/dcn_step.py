"""One training step (forward + OTA loss + backward + SGD) of the Table 5 models, with and without DCNv2.

    python benchmarks/dcn_step.py [--device cuda] [--batch 2] [--height 800 --width 1344] [--repeat 10]

Random images and ~7 random gt boxes per image (COCO's mean), 80 classes, channels_last.
Prints a table: ms per step (median of --repeat after 3 warm-ups) and peak GPU memory, in
fp32 and under bf16 autocast (torchvision runs deform_conv2d in fp32 inside autocast).
"""

import argparse
import statistics
import sys
import time

import torch

from otadet.config import load_model_config
from otadet.criterion import build_criterion
from otadet.models.build import build_detector


def _batch(b: int, h: int, w: int, device: torch.device, generator: torch.Generator):
    images = torch.randn(b, 3, h, w, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
    g = 7
    xy = torch.rand(b, g, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
    wh = 16 + torch.rand(b, g, 2, generator=generator) * torch.tensor([w * 0.3, h * 0.3])
    boxes = torch.cat((xy, xy + wh), -1).to(device)
    labels = torch.randint(0, 80, (b, g), generator=generator).to(device)
    return images, boxes, labels, torch.ones(b, g, dtype=torch.bool, device=device)


def step_time(name: str, args, amp: bool) -> tuple[float, float]:
    device = torch.device(args.device)
    cfg = load_model_config(name)
    torch.manual_seed(0)
    model = build_detector(cfg, 80).to(device, memory_format=torch.channels_last).train()
    criterion = build_criterion(cfg, 80)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    batch = _batch(args.batch, args.height, args.width, device, torch.Generator().manual_seed(0))
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(3 + args.repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(batch[0])
        loss, _, _ = criterion(outputs, batch[1], batch[2], batch[3])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del model, optimizer, outputs, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 1000 * statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)  # 1333 padded to a multiple of 32
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["ota_r50.yaml", "ota_x101.yaml", "ota_x101_dcn.yaml"])
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"`python {' '.join(sys.argv)}` on {name}, torch {torch.__version__}, batch {args.batch} x {args.height}x{args.width}")
    print("| model | precision | ms / step | peak GPU memory (GiB) |\n|---|---|---|---|")
    for model in args.models:
        for amp in (False, True):
            try:
                ms, peak = step_time(model, args, amp)
                print(f"| {model} | {'bf16 autocast' if amp else 'fp32'} | {ms:.0f} | {peak:.1f} |", flush=True)
            except RuntimeError as e:
                print(f"| {model} | {'bf16 autocast' if amp else 'fp32'} | failed: {str(e).splitlines()[0][:120]} | |", flush=True)


if __name__ == "__main__":
    main()
