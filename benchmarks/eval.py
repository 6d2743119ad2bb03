"""CrowdHuman scoring speed at the size of CrowdHuman val (4,370 images x 300 detections, ~100k gts).

    OMP_NUM_THREADS=1 python benchmarks/eval.py          # prints a markdown table

The data is synthetic but shaped like the real thing: ~23 gts per image (gamma-distributed
counts, a few images with 100+), ~5% of them ignore regions ('mask' or extra.ignore), pedestrian
aspect ratios, crowds clustered around a few centres, and 300 detections per image — one
jittered copy per gt (as after NMS), the rest clutter — with scores from a sigmoid. Time is split into
parsing the records (dicts -> arrays) and the vectorised matching + pooled metrics.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "metrics"))
from test_crowdhuman_metric import _reference  # noqa: E402  (the tests' per-detection reference)

from otadet.metrics import crowdhuman  # noqa: E402


def make_records(num_images: int, dets_per_image: int, mean_gts: float, seed: int = 0):
    """Synthetic (gt_records, dt_records) with CrowdHuman's fields."""
    rng = np.random.default_rng(seed)
    gt_records, dt_records = [], []
    for i in range(num_images):
        w, h = int(rng.integers(600, 1600)), int(rng.integers(400, 1200))
        n = int(min(rng.gamma(1.5, mean_gts / 1.5), 250))
        centres = rng.uniform((0, 0), (w, h), (max(n // 10, 1), 2))
        bh = np.exp(rng.uniform(np.log(20), np.log(h * 0.9), n))
        bw = bh * rng.uniform(0.3, 0.5, n)
        xy = centres[rng.integers(len(centres), size=n)] + rng.normal(0, 1, (n, 2)) * (w / 8, h / 8) - np.stack([bw, bh], 1) / 2
        fbox = np.round(np.concatenate([xy, np.stack([bw, bh], 1)], 1), 1)  # (n, 4) xywh, may leave the image
        kind = rng.random(n)
        gtboxes = [
            {"fbox": box, "tag": "mask" if k < 0.03 else "person", **({"extra": {"ignore": 1}} if 0.03 <= k < 0.05 else {})}
            for box, k in zip(fbox.tolist(), kind.tolist())
        ]
        gt_records.append({"ID": f"{i:06d},synthetic", "gtboxes": gtboxes, "height": h, "width": w})
        m = dets_per_image
        near = min(n, m // 2)
        src = fbox[rng.permutation(n)[:near]]  # one detection near each of (up to m/2) gts, as after NMS
        jitter = src + rng.normal(0, 0.1, (near, 4)) * np.concatenate([src[:, 2:], src[:, 2:]], 1)
        ch = np.exp(rng.uniform(np.log(10), np.log(h * 0.8), m - near))
        clutter = np.stack([rng.uniform(0, w, m - near), rng.uniform(0, h, m - near), ch * rng.uniform(0.3, 0.6, m - near), ch], 1)
        boxes = np.concatenate([jitter, clutter])
        scores = 1 / (1 + np.exp(-np.concatenate([rng.normal(2.5, 1.5, near), rng.normal(-5, 1.5, m - near)])))
        dtboxes = [{"box": b, "score": s, "tag": 1} for b, s in zip(np.round(boxes, 2).tolist(), np.round(scores, 4).tolist())]
        dt_records.append({"ID": gt_records[-1]["ID"], "dtboxes": dtboxes, "height": h, "width": w})
    return gt_records, dt_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4370)
    parser.add_argument("--dets", type=int, default=300)
    parser.add_argument("--mean-gts", type=float, default=22.8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", type=int, default=200, help="images also scored by the slow reference")
    args = parser.parse_args()

    gt, dt = make_records(args.images, args.dets, args.mean_gts)
    num_gts = sum(len(r["gtboxes"]) for r in gt)
    num_dts = sum(len(r["dtboxes"]) for r in dt)
    parse, total, result = [], [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        ids, sizes, *_ = crowdhuman.parse_gt(gt)
        crowdhuman.parse_dt(dt, ids, sizes)
        parse.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = crowdhuman.evaluate(gt, dt)
        total.append(time.perf_counter() - start)
    same = crowdhuman.evaluate(gt[: args.check], dt[: args.check]) == _reference(gt[: args.check], dt[: args.check])
    print(f"python benchmarks/eval.py --images {args.images} --dets {args.dets} --mean-gts {args.mean_gts} --repeat {args.repeat}\n")
    print("| images | gts | detections | parse records (s) | evaluate, total (s) | mMR | AP | recall | = reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.images} | {num_gts} | {num_dts} | {min(parse):.2f} | {min(total):.2f} | "
        f"{result['mMR']:.4f} | {result['AP']:.4f} | {result['recall']:.4f} | "
        f"{'yes' if same else 'NO'} (first {args.check} images) |"
    )


if __name__ == "__main__":
    main()
