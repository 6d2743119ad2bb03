"""Training data loader alone: images/s at 800x1333 for `workers` and `pin_memory` settings.

    python benchmarks/loader.py                       # prints a markdown table
    python benchmarks/loader.py --workers 0 2 4 8 --batches 40

The loader is the trainer's (TrainSampler + per-sample seeded augmentation + collate) over
the built-in shapes data (224-320 px images, so Resize upsamples them to shorter side 800,
max 1333, as COCO's ~640x480 images are). Each setting reads `--warmup` batches (worker start,
first files), then times `--batches` batches of `--batch` images. pin_memory only acts where
CUDA is available; elsewhere torch ignores it (the table says so).
"""

import argparse
import time
import warnings

import torch

from otadet.datasets.data_yaml import load_data
from otadet.datasets.loader import build_dataloader
from otadet.engine.sampling import TrainSampler


def images_per_second(spec, *, workers: int, pin_memory: bool, batch: int, batches: int, warmup: int) -> float:
    sampler = TrainSampler(rank=0, world_size=1, seed=0)
    loader = build_dataloader(
        spec, "train", imgsz=800, max_size=1333, batch=batch, workers=workers, shuffle=False, seed=0,
        pin_memory=pin_memory, sampler=sampler, wrap=sampler.wrap,
    )  # fmt: skip
    sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(it).paths)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=2, help="images per GPU (the paper: 2)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # said once in the header instead
    spec = load_data(opts.data)
    cuda = torch.cuda.is_available()
    print(f"`python benchmarks/loader.py --workers {' '.join(map(str, opts.workers))} --batch {opts.batch} --batches {opts.batches}`"
          f" — {torch.get_num_threads()} torch threads, CUDA {'yes' if cuda else 'no (pin_memory is a no-op)'}\n")  # fmt: skip
    print("| workers | pin_memory | images / s |")
    print("|---|---|---|")
    for workers in opts.workers:
        for pin in (False, True):
            rate = images_per_second(spec, workers=workers, pin_memory=pin, batch=opts.batch, batches=opts.batches, warmup=opts.warmup)
            print(f"| {workers} | {pin} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
