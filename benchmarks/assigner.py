"""OTA assignment speed and memory: the per-image all-anchor reference vs the batched compacted assigner.

    python benchmarks/assigner.py [--device cpu|cuda] [--repeat N] [--threads T]

The reference is tests/assign/test_ota.py::reference_ota, written the official code's way
(one image at a time, every anchor, a (G, A, C) one-hot focal cost, u/v Sinkhorn). The
batched assigner is otadet.assign.ota with its defaults (50 iterations, eps 0.1; on the CPU
its Sinkhorn runs over the (gt, candidate) pairs, `sparse=True`); the "dense solve" column is
the same assigner with sparse=False (a padded (G+1, K) Sinkhorn, the CUDA path). Inputs
mimic training: FCOS points of an 800x1333 image, boxes predicted around every point, gts of
many sizes (CrowdHuman-like ones clustered). The same run checks the assignments: anchors
the two agree on, the compacted solve against ota(compact=False) and the sparse solve against
the dense one, which must be equal.
Peak memory: CUDA max_memory_allocated on a GPU; on the CPU the process's peak resident set
growth (VmHWM after a reset through /proc/self/clear_refs, Linux only; pages freed by an
earlier case can hide part of a later one's growth, so treat CPU figures as lower bounds).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "assign"))
from scenes import fcos_points, pad_batch, random_scene  # noqa: E402  (the tests' scene generator)
from test_ota import reference_ota  # noqa: E402  (the tests' per-image reference)

from otadet.assign import ota  # noqa: E402

CASES = {  # name: (height, width, gts per image, crowded, classes)
    "COCO-like (8 x 800x1333, ~7 gts)": (800, 1333, [7, 3, 12, 5, 9, 6, 8, 4], False, 80),
    "CrowdHuman-like (8 x 800x1333, ~23 gts, up to 150)": (800, 1333, [23, 150, 12, 18, 30, 9, 25, 27], True, 1),
}


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(fn, device: torch.device, repeat: int) -> tuple[float, float | None, object]:
    """Mean seconds per call over `repeat` calls (after one warm-up), peak extra memory in MiB, last result."""
    out = fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size
            base = _rss_kib("VmRSS")
        except OSError:
            base = None
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync()
    seconds = (time.perf_counter() - start) / repeat
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        hwm = _rss_kib("VmHWM")
        peak = (hwm - base) / 1024 if base is not None and hwm is not None else None
    return seconds, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {name}")
    print(f"command: python benchmarks/assigner.py --device {args.device} --repeat {args.repeat} --threads {args.threads}\n")
    print("| batch | anchors | reference img/s | batched img/s | speed-up | dense solve img/s | reference peak MiB | "
          "batched peak MiB | anchors alike (vs reference) | compacted = all anchors | sparse = dense |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, (height, width, counts, crowded, classes) in CASES.items():
        gen = torch.Generator().manual_seed(0)
        points, strides = fcos_points(height, width)
        scenes = [random_scene(gen, n, points, strides, classes, height=height, width=width, crowded=crowded) for n in counts]
        points, strides = points.to(device), strides.to(device)
        scenes = [tuple(t.to(device) for t in s) for s in scenes]
        batch = pad_batch([tuple(t.cpu() for t in s) for s in scenes])
        batch = tuple(t.to(device) for t in batch)

        def per_image():
            return [reference_ota(points, strides, *s) for s in scenes]

        # Batched first: on the CPU the resident-set growth of the second measured can hide in pages the first freed.
        t_ota, mem_ota, result = measure(lambda: ota(points, strides, *batch), device, args.repeat)
        t_ref, mem_ref, ref = measure(per_image, device, args.repeat)
        t_dense, _, dense = measure(lambda: ota(points, strides, *batch, sparse=False), device, args.repeat)
        full = ota(points, strides, *batch, compact=False)
        alike = torch.stack([result.matched[i] == r for i, r in enumerate(ref)]).float().mean().item()
        exact = "yes" if torch.equal(full.matched, result.matched) and bool(result.stats["compacted"]) else "NO"
        same = "yes" if torch.equal(dense.matched, result.matched) else "NO"
        if device.type == "cuda":
            same = "(dense on CUDA)"
        B = len(counts)

        def mib(x):
            return "n/a" if x is None else f"{x:.0f}"

        print(f"| {case} | {points.shape[0]} | {B / t_ref:.2f} | {B / t_ota:.1f} | **{t_ref / t_ota:.0f}x** | {B / t_dense:.1f} | "
              f"{mib(mem_ref)} | {mib(mem_ota)} | {alike:.4%} | {exact} | {same} |")  # fmt: skip


if __name__ == "__main__":
    main()
