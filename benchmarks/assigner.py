"""OTA assignment speed: all anchors vs candidate compaction, on realistic batches.

    python benchmarks/assigner.py            # prints a markdown table

Inputs mimic training: FCOS points of the given image size, predicted boxes around every
point, gts of many sizes (crowded ones clustered). Both forms run the same Sinkhorn (50
iterations, eps 0.1); the table reports how many anchors they assign alike.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "assign"))
from test_ota import fcos_points, pad_batch, random_scene  # noqa: E402  (the tests' scene generator)

from otadet.assign import ota  # noqa: E402

CASES = {  # name: (height, width, gts per image, crowded, classes)
    "ota_tiny batch (8 x 288x352, 9-24 gts)": (288, 352, [16, 24, 12, 20, 18, 9, 22, 15], True, 4),
    "COCO-like (8 x 800x1333, ~7 gts)": (800, 1333, [7, 3, 12, 5, 9, 6, 8, 4], False, 80),
    "CrowdHuman-like (8 x 800x1333, ~23 gts)": (800, 1333, [23, 40, 12, 18, 30, 9, 25, 27], True, 1),
}


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, command: python benchmarks/assigner.py --repeat {args.repeat}\n")
    print("| batch | anchors | all anchors (ms) | compacted (ms) | speed-up | anchors assigned alike |")
    print("|---|---|---|---|---|---|")
    for name, (height, width, counts, crowded, classes) in CASES.items():
        gen = torch.Generator().manual_seed(0)
        points, strides = fcos_points(height, width)
        scenes = [random_scene(gen, n, points, strides, classes, height=height, width=width, crowded=crowded) for n in counts]
        batch = pad_batch(scenes)
        full = ota(points, strides, *batch, compact=False)
        compact = ota(points, strides, *batch, compact=True)
        t_full = timed(lambda: ota(points, strides, *batch, compact=False), args.repeat)
        t_compact = timed(lambda: ota(points, strides, *batch, compact=True), args.repeat)
        same = (full.matched == compact.matched).float().mean().item()
        differ = int((full.matched != compact.matched).sum())
        print(f"| {name} | {points.shape[0]} | {t_full * 1e3:.0f} | {t_compact * 1e3:.0f} | {t_full / t_compact:.1f}x | {same:.5%} ({differ} differ) |")


if __name__ == "__main__":
    main()
