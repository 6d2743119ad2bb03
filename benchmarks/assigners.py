"""Does OTA train a better detector here than FCOS, ATSS and SimOTA? The paper's comparisons at equal budget.

    python benchmarks/assigners.py                    # run every row not done yet (resumable), then print the tables
    python benchmarks/assigners.py --only 'crowd-*'   # rows whose name matches a glob (repeatable)
    python benchmarks/assigners.py --table            # only print the tables from benchmarks/results/*.json
    python benchmarks/assigners.py --list             # the rows, done or not
    python benchmarks/assigners.py --full --device cuda   # the same rows on COCO / CrowdHuman, R50, paper schedules

One row = one training run of the same detector and recipe in which only the assigner (or one
assigner knob, for the ablations) changes, then its validation and the assigner's statistics
on the val split with the trained weights (N_amb per image, positives per gt, mean k). Each row
runs in its own process (`--jobs` at a time, `--threads` each: CPU training is deterministic
per machine for a fixed thread count) and writes benchmarks/results/<row>.json when done, which
is committed; a rerun skips rows that have a result and resumes a killed row from its last.pt.
"""

import argparse
import dataclasses
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Recipe:
    """Everything a row shares: the detector, the schedule, the data of each dataset key."""

    model: str
    data: dict  # dataset key -> data YAML
    train: dict  # run arguments every row trains with
    project: str


# The default table: ota_tiny (ResNet-10, 64-ch FPN/head) from scratch, the demo's recipe but
# 200 iterations at batch 8 (1,600 images, 2 epochs of the 800 training images), sized so the
# whole table fits in ~3 CPU hours on 2 cores; lr drops at 2/3 and 8/9 as in the 1x schedule.
CPU = Recipe(
    model="ota_tiny.yaml",
    data={"shapes": "shapes.yaml", "crowd": "shapes-crowd.yaml"},
    train=dict(
        iters=200, batch=8, imgsz=256, max_size=352, optimizer="adamw", lr0=0.006, weight_decay=0.05,
        warmup_iters=50, workers=1, val=False, save_period=50,
    ),  # fmt: skip
    project="runs/fidelity",
)
# --full: the paper's setting, for a GPU machine (documented; not run on the CPU).
FULL = Recipe(
    model="ota_r50.yaml",
    data={"shapes": "coco.yaml", "crowd": "crowdhuman.yaml"},
    train=dict(pretrained="torchvision", val=False, save_period=5000, amp=True),
    project="runs/fidelity-full",
)
FULL_SCHEDULE = {"shapes": "1x", "crowd": "crowdhuman"}


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # main | spread | fixed_k | radius | ambiguity
    dataset: str  # a key of Recipe.data
    assigner: dict  # the model YAML's assigner: mapping
    seed: int = 0
    iters: int | None = None  # None: the recipe's


def _rows() -> list[Row]:
    rows = []
    for seed in (0, 1):  # the main table: 4 assigners x 2 datasets x 2 seeds
        for dataset in ("crowd", "shapes"):
            for name in ("fcos", "atss", "simota", "ota"):
                rows.append(Row(f"{dataset}-{name}-s{seed}", "main", dataset, {"name": name}, seed))
    for dataset in ("crowd", "shapes"):  # a third seed of OTA and FCOS: the seed-to-seed spread
        for name in ("ota", "fcos"):
            rows.append(Row(f"{dataset}-{name}-s2", "spread", dataset, {"name": name}, 2))
    for seed in (0, 1):  # the multi-class shapes learn slowly from scratch: OTA and FCOS at 3x the budget
        for name in ("fcos", "ota"):
            rows.append(Row(f"shapes600-{name}-s{seed}", "long", "shapes", {"name": name}, seed, iters=600))
    for k in (1, 5, 10, 20):  # Table 4: fixed k vs dynamic k (crowd-ota-s0)
        rows.append(Row(f"crowd-ota-fixk{k}", "fixed_k", "crowd", {"name": "ota", "fixed_k": k}))
    for r in (3, 5, 7):  # Table 2: the centre prior's r for OTA (r^2 nearest per level) and ATSS (top r^2)
        rows.append(Row(f"crowd-ota-r{r}", "radius", "crowd", {"name": "ota", "center_prior": "nearest", "prior_radius": r}))
        rows.append(Row(f"crowd-atss-r{r}", "radius", "crowd", {"name": "atss", "top_k": r * r}))
    for rule in ("min_area", "max_iou", "min_loss"):  # Table 3: a hand rule settles ambiguous anchors, then OTA
        rows.append(Row(f"crowd-ota-{rule}", "ambiguity", "crowd", {"name": "ota", "ambiguity": rule}))
    return rows


ROWS = {row.name: row for row in _rows()}


# ----------------------------------------------------------------------------- one row (a subprocess)


def _assign_stats(detector, data: str, recipe: Recipe, device) -> dict:
    """The assigner's statistics on the val split with the trained weights: per-image means."""
    import torch

    from otadet.criterion import build_criterion
    from otadet.datasets.data_yaml import load_data
    from otadet.datasets.loader import build_dataloader

    spec = load_data(data)
    loader = build_dataloader(
        spec, "val", imgsz=recipe.train.get("imgsz", 800), max_size=recipe.train.get("max_size", 1333),
        batch=recipe.train.get("batch", 8), workers=0, shuffle=False, seed=0,
    )  # fmt: skip
    criterion = build_criterion(detector.cfg, len(detector.names))
    net = detector.net.to(device).eval()
    totals, images = {}, 0
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            _, _, stats = criterion(net(batch.images), batch.gt_boxes, batch.gt_labels, batch.gt_mask, batch.ignore_boxes, batch.ignore_mask)
            n = len(batch.paths)
            for key in ("num_ambiguous", "num_pos", "num_gts"):
                totals[key] = totals.get(key, 0.0) + float(stats[key])
            for key in ("mean_k", "pos_per_gt"):  # batch means, weighted by the batch's gts
                totals[key] = totals.get(key, 0.0) + float(stats[key]) * float(stats["num_gts"])
            images += n
    gts = max(totals["num_gts"], 1.0)
    return {
        "n_amb_per_image": totals["num_ambiguous"] / images,
        "pos_per_image": totals["num_pos"] / images,
        "gts_per_image": totals["num_gts"] / images,
        "mean_k": totals["mean_k"] / gts,
        "pos_per_gt": totals["pos_per_gt"] / gts,
    }


def _model_yaml(row: Row, recipe: Recipe, folder: Path) -> Path:
    """The recipe's model YAML with the row's assigner: the only difference between rows of a table."""
    import yaml

    from otadet.utils.paths import find_asset

    cfg = yaml.safe_load(find_asset(recipe.model, "cfg").read_text())
    cfg["assigner"] = dict(row.assigner)
    cfg["name"] = f"{cfg['name']}-{row.name}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{row.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_row(row: Row, recipe: Recipe, device: str | None, threads: int, out: Path) -> dict:
    """Train, validate and measure one row; returns (and writes to `out`) its result."""
    import torch

    import otadet
    from otadet import Detector

    torch.set_num_threads(threads)
    data = recipe.data[row.dataset]
    train_dir = ROOT / recipe.project / "train" / row.name
    last = train_dir / "weights" / "last.pt"
    common = dict(data=data, seed=row.seed, project=str(ROOT / recipe.project), name=row.name, device=device, verbose=False)
    extra = {"schedule": FULL_SCHEDULE[row.dataset]} if recipe is FULL else {}
    if row.iters is not None:
        extra["iters"] = row.iters
    start = time.perf_counter()
    if last.is_file():  # a row without a result was stopped: continue it (best.pt is written at every epoch end)
        print(f"[{row.name}] resuming from {last}", flush=True)
        detector = Detector(str(last), verbose=False)
        metrics = detector.train(resume=str(last), **common)
    else:
        detector = Detector(str(_model_yaml(row, recipe, ROOT / recipe.project / "cfg")), verbose=False)
        metrics = detector.train(**common, exist_ok=True, **{**recipe.train, **extra})  # validates the final weights
    train_s = time.perf_counter() - start  # training and that final validation
    iters = row.iters or recipe.train.get("iters") or 0
    stats = _assign_stats(detector, data, recipe, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    keep = ("AP", "AP50", "AP75", "APs", "APm", "APl", "mMR", "AP", "recall")
    result = {
        "row": row.name, "group": row.group, "dataset": row.dataset, "data": data, "assigner": row.assigner, "seed": row.seed,
        "metrics": {k: metrics[k] for k in keep if k in metrics},
        "assign": stats,
        "train_wall_s": round(train_s, 1), "s_per_iter": round(train_s / iters, 3) if iters else None,
        "recipe": {"model": recipe.model, **recipe.train, **extra}, "threads": threads,
        "otadet": otadet.__version__, "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "command": f"python benchmarks/assigners.py --only {row.name}" + (" --full" if recipe is FULL else ""),
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)  # atomic: a result file is whole or absent
    return result


# ----------------------------------------------------------------------------- tables


def _load(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    both = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"**{mean:.{digits}f}** ({both})" if len(values) > 1 else f"{mean:.{digits}f}"


# The paper's numbers (Ge et al., CVPR 2021), R50, COCO 1x / CrowdHuman, beside ours.
PAPER_MAIN = {
    "shapes": {"fcos": "38.3–39.5 AP (T1)", "atss": "39.4 AP (T1)", "simota": "—", "ota": "40.7 AP (T1)"},
    "crowd": {"fcos": "MR 55.0 (T6)", "atss": "MR 49.5 (T6)", "simota": "—", "ota": "MR 46.6 (T6)"},
}
PAPER_NAMB = {"atss": {3: 2.1, 5: 15.9, 7: 36.3}, "ota": {3: 0.2, 5: 0.2, 7: 0.3}}
PAPER_FIXED_K = {1: 36.7, 5: 39.6, 10: 40.2, 20: 40.1, "dynamic": 40.7}  # Table 4, COCO AP (R50 1x)
PAPER_AMBIGUITY = {"min_area": 39.7, "max_iou": 39.8, "min_loss": 39.9, "none": 40.7}  # Table 3, COCO AP


def main_table(done: dict) -> list[str]:
    lines = [
        "| dataset | assigner | seeds | AP | AP50 | mMR (↓) | recall | N_amb / img | pos / gt | s / iter | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for dataset in ("shapes", "crowd"):
        for name in ("fcos", "atss", "simota", "ota"):
            rs = [r for r in done.values() if r["group"] in ("main", "spread") and r["dataset"] == dataset and r["assigner"] == {"name": name}]
            rs.sort(key=lambda r: r["seed"])
            get = lambda key, src="metrics": [r[src][key] for r in rs if key in r[src]]  # noqa: E731
            lines.append(
                f"| {dataset} | {name} | {','.join(str(r['seed']) for r in rs) or '—'} | {_cell(get('AP'))} | {_cell(get('AP50'))} | "
                f"{_cell(get('mMR'))} | {_cell(get('recall'))} | {_cell(get('n_amb_per_image', 'assign'), 2)} | "
                f"{_cell(get('pos_per_gt', 'assign'), 1)} | {_cell([r['s_per_iter'] for r in rs if r['s_per_iter']], 2)} | "
                f"{PAPER_MAIN[dataset][name]} |"
            )
    return lines


def long_table(done: dict) -> list[str]:
    lines = ["", "Shapes at 3x the budget (600 iterations), OTA vs FCOS:", "", "| assigner | seeds | AP | AP50 | AP75 |", "|---|---|---|---|---|"]
    for name in ("fcos", "ota"):
        rs = sorted((r for r in done.values() if r["group"] == "long" and r["assigner"] == {"name": name}), key=lambda r: r["seed"])
        cells = [_cell([r["metrics"][k] for r in rs]) for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs) or '—'} | " + " | ".join(cells) + " |")
    return lines


def ablation_tables(done: dict) -> list[str]:
    def metric_row(label: str, r: dict | None, paper) -> str:
        if r is None:
            return f"| {label} | — | — | — | — | {paper} |"
        m = r["metrics"]
        return f"| {label} | {m.get('mMR', float('nan')):.3f} | {m.get('AP', float('nan')):.3f} | {m.get('recall', float('nan')):.3f} | {r['assign']['n_amb_per_image']:.2f} | {paper} |"

    head = ["| {} | mMR (↓) | AP | recall | N_amb / img | paper (COCO AP) |", "|---|---|---|---|---|---|"]
    lines = ["", "Fixed k vs dynamic k (Table 4), crowd, seed 0:", "", head[0].format("k"), head[1]]
    for k in (1, 5, 10, 20):
        lines.append(metric_row(f"fixed {k}", done.get(f"crowd-ota-fixk{k}"), PAPER_FIXED_K[k]))
    lines.append(metric_row("dynamic (OTA)", done.get("crowd-ota-s0"), PAPER_FIXED_K["dynamic"]))
    lines += ["", "Centre prior radius r (Table 2), crowd, seed 0; paper column = its N_amb:", "", head[0].format("assigner, r").replace("paper (COCO AP)", "paper N_amb"), head[1]]
    for r in (3, 5, 7):
        for name in ("atss", "ota"):
            lines.append(metric_row(f"{name.upper()} r={r}", done.get(f"crowd-{name}-r{r}"), PAPER_NAMB[name][r]))
    lines += ["", "Ambiguity rules followed by OTA (Table 3), crowd, seed 0:", "", head[0].format("rule"), head[1]]
    for rule in ("min_area", "max_iou", "min_loss"):
        lines.append(metric_row(f"{rule} + OTA", done.get(f"crowd-ota-{rule}"), PAPER_AMBIGUITY[rule]))
    lines.append(metric_row("OTA alone", done.get("crowd-ota-s0"), PAPER_AMBIGUITY["none"]))
    return lines


# ----------------------------------------------------------------------------- driver


def _selected(patterns: list[str] | None) -> list[Row]:
    rows = list(ROWS.values())
    if patterns:
        rows = [r for r in rows if any(fnmatch.fnmatch(r.name, p) for p in patterns)]
        if not rows:
            raise SystemExit(f"--only {patterns}: no row matches — `--list` shows the rows")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="glob of row names (repeatable)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the tables from the results, run nothing")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--device", default=None)
    parser.add_argument("--full", action="store_true", help="COCO / CrowdHuman, ota_r50, the paper's schedules (GPU)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: train one row in this process
    args = parser.parse_args()
    recipe, results = (FULL, RESULTS / "full") if args.full else (CPU, RESULTS)
    os.chdir(ROOT)
    if args.run:
        run_row(ROWS[args.run], recipe, args.device, args.threads, results / f"{args.run}.json")
        return
    rows = _selected(args.only)
    done = _load(results)
    if args.list:
        for r in rows:
            print(f"{'done ' if r.name in done else 'to do'}  {r.name:<22} {r.group:<10} {json.dumps(r.assigner)}")
        return
    todo = [r for r in rows if r.name not in done]
    if not args.table and todo:
        _run_all(todo, args)
        done = _load(results)
    print(f"# {len(done)} of {len(ROWS)} rows done; recipe: {dataclasses.asdict(recipe)}\n")
    print("\n".join(main_table(done) + long_table(done) + ablation_tables(done)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass
    return pid > 0


def _run_all(todo: list[Row], args) -> None:
    """Rows in subprocesses, `--jobs` at a time; each logs to runs/fidelity/logs/<row>.log."""
    logs = ROOT / (FULL if args.full else CPU).project / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    running: list[tuple[Row, subprocess.Popen, float]] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < args.jobs:
            row = queue.pop(0)
            claim = logs / f"{row.name}.pid"  # a row another driver is training right now is left to it
            if claim.is_file() and _alive(int(claim.read_text() or 0)):
                print(f"{row.name}: running in pid {claim.read_text()}, skipped", flush=True)
                continue
            cmd = [sys.executable, __file__, "--run", row.name, "--threads", str(args.threads)]
            cmd += (["--device", args.device] if args.device else []) + (["--full"] if args.full else [])
            with open(logs / f"{row.name}.log", "a") as log:
                running.append((row, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
            claim.write_text(str(running[-1][1].pid))
            print(f"started {row.name}", flush=True)
        time.sleep(2)
        for item in list(running):
            row, proc, began = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {logs / (row.name + '.log')})"
                print(f"{row.name}: {status} in {time.time() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
