"""Fine-tuning a 4-class shapes checkpoint on other classes vs training from scratch, equal iterations.

    python benchmarks/finetune.py                          # ~10 min on 2 busy CPU cores; prints a markdown table
    python benchmarks/finetune.py --classes 1 --iters 40 120

1. Trains ota_tiny on the built-in shapes generator (seed 0, 4 classes) for --source-iters.
2. Makes a target dataset from other scenes (generator seed 1) relabelled to 2 classes
   [circle, polygon] (polygon = rectangle, triangle, cross) or 1 class [shape]: every object
   keeps its box, only the class set changes. `circle` exists in the checkpoint, so with 2
   classes its class-layer row is kept (keep_class_rows); `polygon` / `shape` start at the prior.
3. For each N in --iters: Detector(source).train(data=target, iters=N) and
   Detector('ota_tiny.yaml').train(data=target, iters=N) with the same run arguments; COCO AP on
   the target's val split after each.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from otadet import Detector
from otadet.datasets.shapes import generate_shapes

GENERATOR = {"width": [128, 160], "height": [96, 128], "objects": [4, 10]}
TARGET_CLASSES = {1: {"circle": "shape", "rectangle": "shape", "triangle": "shape", "cross": "shape"},
                  2: {"circle": "circle", "rectangle": "polygon", "triangle": "polygon", "cross": "polygon"}}  # fmt: skip


def _data_yaml(file: Path, root: Path, ann: Path) -> Path:
    spec = {
        "format": "coco", "path": str(root), "train": "images/train", "val": "images/val",
        "train_annotations": str(ann / "train.json"), "val_annotations": str(ann / "val.json"),
    }  # fmt: skip
    file.write_text(yaml.safe_dump(spec))
    return file


def make_dataset(work: Path, name: str, *, seed: int, num_train: int, num_val: int, classes: dict[str, str] | None) -> Path:
    """Generate shapes into work/name and write its data YAML; `classes` maps old names to new ones."""
    root = work / name
    if not (root / "generate.json").is_file():
        generate_shapes(root, seed=seed, num_train=num_train, num_val=num_val, **GENERATOR)
    ann = root / "annotations"
    if classes is not None:  # relabel: same boxes, the new class set in order of first appearance
        new_names = list(dict.fromkeys(classes.values()))
        ann = root / f"annotations-{len(new_names)}"
        ann.mkdir(exist_ok=True)
        for split in ("train", "val"):
            data = json.loads((root / "annotations" / f"{split}.json").read_text())
            old = {c["id"]: c["name"] for c in data["categories"]}
            for a in data["annotations"]:
                a["category_id"] = new_names.index(classes[old[a["category_id"]]]) + 1
            data["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(new_names)]
            (ann / f"{split}.json").write_text(json.dumps(data))
    return _data_yaml(work / f"{name}-{ann.name}.yaml", root, ann)


def _fresh(work: Path, name: str) -> str:
    """A run name under work/train whose folder is empty: a rerun replaces this benchmark's own run
    (otadet never trains into a folder that holds weights)."""
    shutil.rmtree(work / "train" / name, ignore_errors=True)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/benchmarks/finetune", help="datasets and runs go here")
    parser.add_argument("--source-iters", type=int, default=240)
    parser.add_argument("--iters", type=int, nargs="+", default=[40, 120], help="target iterations N (both runs)")
    parser.add_argument("--classes", type=int, choices=(1, 2), default=2)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = dict(imgsz=args.imgsz, max_size=160, batch=args.batch, workers=0, val=False, project=str(work), exist_ok=True,
               verbose=False, warmup_iters=20)  # fmt: skip
    source_data = make_dataset(work, "source", seed=0, num_train=400, num_val=50, classes=None)
    target_data = make_dataset(work, "target", seed=1, num_train=200, num_val=50, classes=TARGET_CLASSES[args.classes])

    start = time.time()
    source = Detector("ota_tiny.yaml", verbose=False)
    tag = f"{args.classes}c-src{args.source_iters}"
    source_ap = source.train(data=str(source_data), iters=args.source_iters, name=_fresh(work, f"source-{args.source_iters}"), **run)["AP"]
    rows = []
    for n in args.iters:
        fine = Detector(source.source, verbose=False).train(data=str(target_data), iters=n, name=_fresh(work, f"finetune-{tag}-{n}"), **run)
        scratch = Detector("ota_tiny.yaml", verbose=False).train(data=str(target_data), iters=n, name=_fresh(work, f"scratch-{args.classes}c-{n}"), **run)
        rows.append((n, fine, scratch))
    minutes = (time.time() - start) / 60

    print(f"\npython benchmarks/finetune.py --source-iters {args.source_iters} --iters {' '.join(map(str, args.iters))} "
          f"--classes {args.classes} --imgsz {args.imgsz} --batch {args.batch}\n")  # fmt: skip
    names = ", ".join(dict.fromkeys(TARGET_CLASSES[args.classes].values()))
    print(f"source: ota_tiny, 4 shapes classes, seed 0, {args.source_iters} iterations -> AP {source_ap:.4f} on its val")
    print(f"target: other scenes (seed 1), classes [{names}]; batch {args.batch}, imgsz {args.imgsz}; {minutes:.1f} min in all\n")
    print("| iterations N | fine-tuned: AP | AP50 | from scratch: AP | AP50 |")
    print("|---|---|---|---|---|")
    for n, fine, scratch in rows:
        print(f"| {n} | {fine['AP']:.4f} | {fine['AP50']:.4f} | {scratch['AP']:.4f} | {scratch['AP50']:.4f} |")


if __name__ == "__main__":
    main()
