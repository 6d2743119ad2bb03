"""Speed of the four assigners on the same realistic batches, and CPU/CUDA agreement.

    python benchmarks/baselines.py [--device cuda] [--repeat 3] [--threads 2]

Inputs are the baseline tests' scenes (tests/assign/test_baselines.py): P3-P7 points of an
800x1333 image, predicted boxes around every point, gts of many sizes, crowded ones piled on a
few centres. On a CUDA device the table also reports whether each assigner's matches equal its
CPU matches.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "assign"))
from test_baselines import grid_points, pad_batch, random_scene  # noqa: E402  (the tests' scene generator)

from otadet.assign import ASSIGNERS  # noqa: E402

CASES = {  # name: (gts per image, crowded, classes)
    "COCO-like (8 x 800x1333, ~7 gts)": ([7, 3, 12, 5, 9, 6, 8, 4], False, 80),
    "CrowdHuman-like (8 x 800x1333, ~23 gts)": ([23, 40, 12, 18, 30, 9, 25, 27], True, 1),
}


def timed(fn, repeat: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"torch {torch.__version__}, {where}; command: python benchmarks/baselines.py --device {args.device} --repeat {args.repeat}\n")
    names = list(ASSIGNERS)
    extra = " | same as CPU" if device.type == "cuda" else ""
    print("| batch | " + " | ".join(f"{n} (ms)" for n in names) + extra + " |")
    print("|---|" + "---|" * (len(names) + bool(extra)))
    points, strides = grid_points(800, 1333)
    for case, (counts, crowded, classes) in CASES.items():
        gen = torch.Generator().manual_seed(0)
        batch = pad_batch([random_scene(gen, n, points, strides, num_classes=classes, crowded=crowded) for n in counts])
        on_device = [t.to(device) for t in (points, strides, *batch)]
        times, same = [], []
        for name in names:
            fn = ASSIGNERS[name]
            times.append(timed(lambda: fn(*on_device), args.repeat, device) * 1000)
            if extra:
                same.append(name if torch.equal(fn(*on_device).matched.cpu(), fn(points, strides, *batch).matched) else f"{name} DIFFERS")
        cells = [f"{t:.1f}" for t in times] + ([", ".join(same)] if extra else [])
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
