"""Time of one full training step per assigner, and the assigner's share of it.

    python benchmarks/assigner_step.py --cfg ota_r50.yaml --imgsz 800 --max-size 1333 --batch 2 --device cpu --iters 3

A step is what train_one_epoch does: forward, assign, losses, backward, SGD step. Every
assigner in otadet.assign.ASSIGNERS runs on the same random weights, images and gts (a
COCO-like ~7 boxes per image), with its default knobs; the assigner call is timed on its own
(synchronised on a GPU); the assigners take their steps in turn, round by round (medians).
Prints a table and the OTA/FCOS step-time ratio when both exist,
measured (step over step) and from the assigner times alone (FCOS step - FCOS assigner + OTA
assigner, over the FCOS step): everything but the assigner is the same work, and on a CPU,
where a step takes seconds, the second form is not buried in the run-to-run noise.
"""

import argparse
import copy
import statistics
import time

import torch

from otadet.assign import ASSIGNERS
from otadet.config import load_model_config
from otadet.criterion import OTACriterion
from otadet.models.build import build_detector


def random_targets(gen: torch.Generator, batch: int, height: int, width: int, num_classes: int, per_image: int = 7):
    """Padded gts: per_image boxes of 16-400 px in every image."""
    size = torch.exp(torch.empty(batch, per_image, 2).uniform_(2.8, 6.0, generator=gen))
    centre = torch.rand(batch, per_image, 2, generator=gen) * torch.tensor([width, height])
    boxes = torch.cat((centre - size / 2, centre + size / 2), 2)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    boxes[..., 2:] = torch.maximum(boxes[..., 2:], boxes[..., :2] + 4)
    labels = torch.randint(0, num_classes, (batch, per_image), generator=gen)
    return boxes, labels, torch.ones(batch, per_image, dtype=torch.bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="ota_r50.yaml")
    parser.add_argument("--imgsz", type=int, default=800, help="image height")
    parser.add_argument("--max-size", type=int, default=1333, help="image width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=3, help="timed rounds, one step per assigner each (after one warm-up round)")
    parser.add_argument("--gts", type=int, default=7, help="gts per image (7 COCO-like; 23 CrowdHuman-like)")
    parser.add_argument("--assigners", default=",".join(ASSIGNERS), help="comma list (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = load_model_config(args.cfg)
    torch.manual_seed(0)
    base = build_detector(cfg).to(device, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.imgsz, args.max_size, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    targets = [t.to(device) for t in random_targets(gen, args.batch, args.imgsz, args.max_size, cfg.num_classes, args.gts)]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}")
    print(f"command: python benchmarks/assigner_step.py --cfg {args.cfg} --imgsz {args.imgsz} --max-size {args.max_size} "
          f"--batch {args.batch} --device {args.device} --iters {args.iters} --gts {args.gts}\n")  # fmt: skip
    print("| assigner | step (ms) | assigner (ms) | assigner share |")
    print("|---|---|---|---|")
    names = args.assigners.split(",")
    runs = {}  # name -> (model, optimizer, criterion, assigner seconds)
    for name in names:
        model = copy.deepcopy(base).train()
        spent = []

        def timed_assigner(*a, _assigner=ASSIGNERS[name], _spent=spent, **k):
            sync()
            start = time.perf_counter()
            out = _assigner(*a, **k)
            sync()
            _spent.append(time.perf_counter() - start)
            return out

        criterion = OTACriterion(num_classes=cfg.num_classes, assigner=timed_assigner)
        runs[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9), criterion, spent)

    def step(name: str) -> float:
        model, optimizer, criterion, _ = runs[name]
        sync()
        start = time.perf_counter()
        loss, _, _ = criterion(model(images), *targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    # Round by round (one step of every assigner in turn, after a warm-up round), so that a change
    # of machine load, or of the process's state, reaches every assigner alike.
    times = {name: [] for name in names}
    for round_ in range(args.iters + 1):
        for name in names:
            seconds = step(name)
            if round_:
                times[name].append(seconds)
    steps, assigns = {}, {}
    for name in names:
        steps[name] = statistics.median(times[name])
        assigns[name] = statistics.median(runs[name][3][1:])
        print(f"| {name} | {steps[name] * 1e3:.0f} | {assigns[name] * 1e3:.1f} | {assigns[name] / steps[name]:.1%} |")
    if "ota" in steps and "fcos" in steps:
        derived = (steps["fcos"] - assigns["fcos"] + assigns["ota"]) / steps["fcos"]
        print(f"\nOTA/FCOS step-time ratio: {steps['ota'] / steps['fcos']:.3f} measured, {derived:.3f} from the assigner times")


if __name__ == "__main__":
    main()
