"""OTA assignment speed and memory: the per-image all-anchor reference vs the batched compacted assigner.

    python benchmarks/assigner.py [--device cpu|cuda] [--repeat N] [--threads T]
    python benchmarks/assigner.py --scaling [--device cpu|cuda] [--repeat N] [--threads T]

The reference is tests/assign/test_ota.py::reference_ota, written the official code's way
(one image at a time, every anchor, a (G, A, C) one-hot focal cost, u/v Sinkhorn). The
batched assigner is otadet.assign.ota with its defaults (50 iterations, eps 0.1; on the CPU
its Sinkhorn runs over the (gt, candidate) pairs, `sparse=True`); the "dense solve" column is
the same assigner with sparse=False (a padded (G+1, K) Sinkhorn, the CUDA path). Inputs
mimic training: FCOS points of an 800x1333 image, boxes predicted around every point, gts of
many sizes (CrowdHuman-like ones clustered). The same run checks the assignments: anchors
the two agree on, the compacted solve against ota(compact=False) and the sparse solve against
the dense one, which must be equal.
A second table reports the Sinkhorn early stop (`tol`) against the official fixed 50
iterations: iterations run, speed, marginal error and the anchors whose assignment differs.
`--scaling` prints instead how the batched assigner's time and peak memory per image grow
with the gts per image (1 to 500, at 800x1333), beside the (gt, candidate) pairs and G*A: the
cost should follow the pairs, never G*A*C; its last column splits the time of `--repeat` more
calls between the centre prior, the problem's costs and the solve.
Peak memory: CUDA max_memory_allocated on a GPU; on the CPU the process's peak resident set
growth (VmHWM after a reset through /proc/self/clear_refs, Linux only; pages freed by an
earlier case can hide part of a later one's growth, so treat CPU figures as lower bounds).
"""

import argparse
import ctypes
import os
import statistics
import sys
import threading
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


def device_sync(device: torch.device):
    """A function that waits for `device` (torch.cuda.synchronize on a GPU, nothing on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def peak_memory(fn, device: torch.device) -> tuple[float | None, object]:
    """Peak extra memory of one call in MiB (None where it cannot be read), and its result."""
    sync = device_sync(device)
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
    out = fn()
    sync()
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, out
    hwm = _rss_kib("VmHWM")
    return ((hwm - base) / 1024 if base is not None and hwm is not None else None), out


def median_seconds(fns: dict, device: torch.device, repeat: int) -> tuple[dict, dict]:
    """Median seconds per call of each callable over `repeat` rounds, after one warm-up round,
    and each one's last result.

    Each round calls every callable once, in turn, so a change of machine load reaches all
    alike, and every one runs in the same warmed process (on the CPU the first calls of a
    process ran up to 2x slower than the same calls later in it).
    """
    sync = device_sync(device)
    times, results = {name: [] for name in fns}, {}
    for round_ in range(repeat + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            results[name] = fn()
            sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tols", default="0.1,0.01,0.001", help="early-stop tolerances for the second table ('' skips it)")
    parser.add_argument("--tol-iters", type=int, default=1000, help="the iteration cap with an early stop")
    parser.add_argument("--scaling", action="store_true", help="time and memory per image against gts per image, then exit")
    parser.add_argument("--scaling-batch", type=int, default=2, help="images per call in the --scaling table")
    args = parser.parse_args()
    if args.scaling:
        torch.set_num_threads(args.threads)
        return scaling_table(torch.device(args.device), args.repeat, args.threads, args.scaling_batch)
    tols = [float(t) for t in args.tols.split(",")] if args.tols else []
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {name}")
    print(f"command: python benchmarks/assigner.py --device {args.device} --repeat {args.repeat} --threads {args.threads} "
          f"--tols '{args.tols}' --tol-iters {args.tol_iters}\n")
    print("| batch | anchors | reference img/s | batched img/s | speed-up | dense solve img/s | reference peak MiB | "
          "batched peak MiB | anchors alike (vs reference) | compacted = all anchors | sparse = dense |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    batches = {}
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

        # Memory first, batched first: on the CPU the resident-set growth of the second measured
        # can hide in pages the first freed.
        mem_ota, result = peak_memory(lambda: ota(points, strides, *batch), device)
        mem_ref, ref = peak_memory(per_image, device)
        fns = {"batched": lambda: ota(points, strides, *batch), "reference": per_image,
               "dense": lambda: ota(points, strides, *batch, sparse=False)}  # fmt: skip
        fns |= {tol: lambda tol=tol: ota(points, strides, *batch, tol=tol, iters=args.tol_iters) for tol in tols}
        seconds, results = median_seconds(fns, device, args.repeat)
        t_ota, t_ref, t_dense, dense = seconds["batched"], seconds["reference"], seconds["dense"], results["dense"]
        full = ota(points, strides, *batch, compact=False)
        alike = torch.stack([result.matched[i] == r for i, r in enumerate(ref)]).float().mean().item()
        exact = "yes" if torch.equal(full.matched, result.matched) and bool(result.stats["compacted"]) else "NO"
        same = "yes" if torch.equal(dense.matched, result.matched) else "NO"
        if device.type == "cuda":
            same = "(dense on CUDA)"
        B = len(counts)
        batches[case] = (B, seconds, results)

        def mib(x):
            return "n/a" if x is None else f"{x:.0f}"

        print(f"| {case} | {points.shape[0]} | {B / t_ref:.2f} | {B / t_ota:.1f} | **{t_ref / t_ota:.0f}x** | {B / t_dense:.1f} | "
              f"{mib(mem_ref)} | {mib(mem_ota)} | {alike:.4%} | {exact} | {same} |")  # fmt: skip
    if tols:
        early_stop_table(batches, tols, args.tol_iters)


def early_stop_table(batches: dict, tols: list[float], cap: int) -> None:
    """The official fixed 50 iterations (tol=None) against early stops (at most `cap` iterations),
    timed in the same rounds as the first table."""
    print(f"\nEarly stop: tol with iters={cap}, against the official tol=None, iters=50.\n")
    print("| batch | tol | iterations run | batched img/s | marginal error | anchors assigned as with 50 iterations |")
    print("|---|---|---|---|---|---|")
    for case, (B, seconds, results) in batches.items():
        fixed = results["batched"]
        for label, key in [("None (official)", "batched")] + [(f"{t:g}", t) for t in tols]:
            out = results[key]
            alike = (out.matched == fixed.matched).float().mean().item()
            print(f"| {case} | {label} | {int(out.stats['sinkhorn_iters'])} | {B / seconds[key]:.1f} | "
                  f"{float(out.stats['marginal_error']):.1e} | {alike:.4%} |")  # fmt: skip


SCALING_GTS = (1, 10, 50, 100, 300, 500)


def sampled_peak_mib(fn, device: torch.device, period: float = 5e-4) -> float:
    """Peak extra memory of one call in MiB: CUDA max_memory_allocated on a GPU; on the CPU the
    resident set sampled every `period` s by a thread, with glibc's mmap threshold pinned low
    (mallopt) so that freed tensors leave the resident set (Linux; a lower bound)."""
    if device.type == "cuda":
        return peak_memory(fn, device)[0]
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large blocks are unmapped on free
    statm, page = Path("/proc/self/statm"), os.sysconf("SC_PAGE_SIZE")
    base = peak = int(statm.read_text().split()[1])
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, int(statm.read_text().split()[1]))
            time.sleep(period)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fn()
    done.set()
    sampler.join()
    return (peak - base) * page / 2**20


def scaling_table(device: torch.device, repeat: int, threads: int, batch_size: int) -> None:
    """ota (its defaults) on batches of `batch_size` 800x1333 images of G gts each, G in SCALING_GTS:
    the cases timed round by round (medians), then one call each for the memory."""
    from otadet.assign._boxes import centre_candidates

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    print(f"torch {torch.__version__}, {name}")
    print(f"command: python benchmarks/assigner.py --scaling --device {device.type} --repeat {repeat} "
          f"--threads {threads} --scaling-batch {batch_size}\n")  # fmt: skip
    points, strides = fcos_points(800, 1333)
    pts, st = points.to(device), strides.to(device)
    batches = {}
    for G in SCALING_GTS:
        gen = torch.Generator().manual_seed(G)
        batches[G] = tuple(t.to(device) for t in pad_batch([random_scene(gen, G, points, strides, 80) for _ in range(batch_size)]))
    seconds, results = median_seconds({G: lambda b=b: ota(pts, st, *b) for G, b in batches.items()}, device, repeat)
    print("| gts / image | (gt, candidate) pairs / image | G*A / image | ms / image | x of 1 gt | peak MiB / image | sparse | iters | "
          "share: prior / problem / solve |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for G, batch in batches.items():
        pairs = centre_candidates(pts, st, batch[2], radius=2.5, margin=0.01).sum().item() / batch_size
        mem = sampled_peak_mib(lambda: ota(pts, st, *batch), device)
        stats = results[G].stats
        print(f"| {G} | {pairs:.0f} | {G * points.shape[0]} | {1e3 * seconds[G] / batch_size:.1f} | "
              f"{seconds[G] / seconds[SCALING_GTS[0]]:.1f} | {mem / batch_size:.1f} | {int(stats['sparse'])} | "
              f"{int(stats['sinkhorn_iters'])} | {stage_shares(lambda: ota(pts, st, *batch), device, repeat)} |")  # fmt: skip


STAGES = ("prior_candidates", "_problem")  # functions of otadet.assign.ota timed by stage_shares, with the SOLVERS


def stage_shares(fn, device: torch.device, calls: int) -> str:
    """`calls` calls of fn with the assigner's stages timed: the shares of their time in the centre
    prior (B, G, A), the problem's costs over (B, G, K) and the solve, as 'a% / b% / c%'
    ('n/a' for a package without these stages, e.g. before issue 13's refactor)."""
    module = sys.modules[ota.__module__]
    if not all(hasattr(module, name) for name in STAGES + ("SOLVERS",)):
        return "n/a"
    sync = device_sync(device)
    spent = dict.fromkeys(STAGES + ("solve",), 0.0)

    def timed(original, key):
        def run(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync()
            spent[key] += time.perf_counter() - start
            return out

        return run

    originals = {name: getattr(module, name) for name in STAGES}
    solvers = dict(module.SOLVERS)
    try:
        for name, original in originals.items():
            setattr(module, name, timed(original, name))
        module.SOLVERS.update({key: timed(solve, "solve") for key, solve in solvers.items()})
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        total = time.perf_counter() - start
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
        module.SOLVERS.update(solvers)
    # _problem's time includes nothing of the solve (the solver runs after it returns).
    return " / ".join(f"{100 * seconds / total:.0f}%" for seconds in spent.values())


if __name__ == "__main__":
    main()
