"""Test-time augmentation on a trained model: AP without TTA, with flips only, and with the ATSS
scales x flips (with and without the per-scale size ranges).

    python benchmarks/tta.py --model runs/train/exp/weights/best.pt [--data shapes.yaml]
    python benchmarks/tta.py --train ota_tiny.yaml [--epochs 10]   # train first (minutes on a GPU)

Prints a table of COCO metrics (pycocotools) and the time per image of inference + postprocess
(with augment=True the validator times the extra passes as postprocess).
"""

import argparse
import functools
import sys

import torch

from otadet import Detector
from otadet.engine import inference, tta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a trained checkpoint")
    parser.add_argument("--train", default=None, help="or a model YAML to train first")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default="shapes.yaml")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.train:
        detector = Detector(args.train, verbose=False)
        detector.train(data=args.data, epochs=args.epochs, workers=args.workers, val=False, exist_ok=True, name="tta_bench")
    else:
        detector = Detector(args.model, verbose=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = {
        "none": None,
        "flip only (ratio 1)": tta.tta_passes(ratios=(1.0,), size_ranges=None),
        "9 scales x flip, all sizes": tta.tta_passes(size_ranges=None),
        "9 scales x flip, ATSS size ranges (default)": tta.tta_passes(),
    }
    rows = []
    original = inference.tta_detect  # what val (and predict) call for augment=True
    try:
        for label, passes in variants.items():
            inference.tta_detect = functools.partial(original, passes=passes)
            m = detector.val(data=args.data, augment=passes is not None, device=device, batch=args.batch,
                             workers=args.workers, verbose=False, exist_ok=True, name="tta_bench")  # fmt: skip
            rows.append((label, m))
    finally:
        inference.tta_detect = original
    print(f"`python {' '.join(sys.argv)}` on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print("| TTA | AP | AP50 | AP75 | APs | APm | APl | ms / image (inference + postprocess) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m in rows:
        cells = " | ".join(f"{m[k]:.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
        print(f"| {label} | {cells} | {m['speed']['inference'] + m['speed']['postprocess']:.1f} |")


if __name__ == "__main__":
    main()
