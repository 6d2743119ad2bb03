"""Training: a visible loop (train_one_epoch) and the small helpers it calls.

run_training() wires config -> data -> model -> criterion -> optimizer, then per epoch:
train_one_epoch, validate, log (console, results.csv, TensorBoard), checkpoint (atomic).
"""

import csv
import math
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import DEFAULT_CONF, Args, ModelConfig
from ..criterion import OTACriterion, build_criterion
from ..datasets.data_yaml import load_data
from ..datasets.loader import build_dataloader
from ..models.build import build_detector
from ..utils.checkpoint import save_checkpoint
from ..utils.log import LOGGER, colorstr
from ..utils.paths import increment_path
from ..utils.torch_utils import model_summary, seed_everything, select_device
from .validator import validate

__all__ = ["run_training", "train_one_epoch", "build_optimizer", "lr_factor"]

REFERENCE_BATCH = 16  # lr0 is given for this batch size (paper: 16 images on 8 GPUs)


def lr_factor(iteration: int, *, total: int, warmup_iters: int, warmup_factor: float, steps: list[float], gamma: float) -> float:
    """Multiplier of the base lr at `iteration`: linear warmup, then x gamma at each step fraction."""
    decay = gamma ** sum(iteration >= round(s * total) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return decay * (warmup_factor * (1 - alpha) + alpha)
    return decay


def build_optimizer(model: nn.Module, args: Args) -> torch.optim.Optimizer:
    """SGD (or AdamW) with lr scaled linearly from batch 16; no weight decay on normalisation layers (detectron2)."""
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if isinstance(module, norm_types) else decay).append(p)
    lr = args.lr0 * args.batch / REFERENCE_BATCH
    if args.batch != REFERENCE_BATCH:
        LOGGER.info(f"lr scaled linearly for batch {args.batch}: {args.lr0} x {args.batch}/{REFERENCE_BATCH} = {lr:g}")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(args.momentum, 0.999))
    raise ValueError(f"optimizer={args.optimizer!r}: use sgd or adamw")


def train_one_epoch(
    model: nn.Module,
    criterion: OTACriterion,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    epoch: int,
    epochs: int,
    grad_clip: float,
    writer: SummaryWriter | None,
) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's mean losses and assigner statistics."""
    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"{epoch + 1}/{epochs}", bar_format="{l_bar}{bar:20}{r_bar}", leave=True)
    for i, batch in enumerate(bar):
        batch = batch.to(device, non_blocking=True)
        # channels_last: ~1.3x faster convolutions on CPU (oneDNN) and with AMP on tensor cores.
        outputs = model(batch.images.contiguous(memory_format=torch.channels_last))
        loss, items, stats = criterion(
            outputs, batch.gt_boxes, batch.gt_labels, batch.gt_mask, batch.ignore_boxes, batch.ignore_mask
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch + 1} iteration {i} ({ {k: v.item() for k, v in items.items()} }); "
                "lower lr0 or raise warmup_iters"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()

        scalars = {**{f"loss/{k}": v.item() for k, v in items.items()}, "loss/total": loss.item()}
        scalars |= {"assign/mean_k": stats["mean_k"].item(), "assign/pos_per_gt": stats["pos_per_gt"].item()}
        for k, v in scalars.items():
            sums[k] = sums.get(k, 0.0) + v
        lr = optimizer.param_groups[0]["lr"]
        if writer is not None:
            step = scheduler.last_epoch
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("lr", lr, step)
        bar.set_postfix_str(
            f"cls {items['cls']:.3f} box {items['box']:.3f} iou {items['iou']:.3f} "
            f"gts {int(stats['num_gts'])} k {stats['mean_k']:.1f} lr {lr:.2g}"
        )
    return {k: v / max(len(loader), 1) for k, v in sums.items()}


def run_training(model_cfg: ModelConfig, args: Args, *, init_state: dict | None = None) -> dict:
    """Train per `args`; returns {'save_dir', 'best', 'last', 'metrics', 'names'}."""
    seed_everything(args.seed)
    device = select_device(args.device)
    spec = load_data(args.data)
    names = list(spec.names)
    model = build_detector(model_cfg, len(names), pretrained=args.pretrained).to(device, memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state)
    if model_cfg.num_classes != len(names):
        LOGGER.info(f"{model_cfg.name}: num_classes {model_cfg.num_classes} -> {len(names)} from {spec.yaml_file.name}")
    model_summary(model, args.imgsz if isinstance(args.imgsz, int) else max(args.imgsz), model_cfg.name)
    criterion = build_criterion(model_cfg, len(names))

    loader_kw = dict(imgsz=args.imgsz, max_size=args.max_size, batch=args.batch, workers=args.workers, seed=args.seed)
    train_loader = build_dataloader(spec, "train", shuffle=True, **loader_kw)
    val_loader = build_dataloader(spec, args.split, shuffle=False, **{**loader_kw, "imgsz": _eval_size(args.imgsz)})
    optimizer = build_optimizer(model, args)
    total = args.epochs * len(train_loader)
    schedule = dict(total=total, warmup_iters=args.warmup_iters, warmup_factor=args.warmup_factor, steps=args.lr_steps, gamma=args.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **schedule))

    save_dir = increment_path(Path(args.project) / "train" / args.name, exist_ok=args.exist_ok)
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    (save_dir / "args.yaml").write_text(yaml.safe_dump(args.to_dict(), sort_keys=False))
    (save_dir / "model.yaml").write_text(yaml.safe_dump(model_cfg.to_dict(), sort_keys=False))
    writer = SummaryWriter(str(save_dir))
    LOGGER.info(
        f"{colorstr('train:')} {len(train_loader.dataset)} images, {len(train_loader)} iterations/epoch, "
        f"{args.epochs} epochs, batch {args.batch}, imgsz {args.imgsz}, device {device}; results to {save_dir}"
    )

    best_fitness, metrics, start = -1.0, {}, time.time()
    for epoch in range(args.epochs):
        losses = train_one_epoch(
            model, criterion, train_loader, optimizer, scheduler,
            device=device, epoch=epoch, epochs=args.epochs, grad_clip=args.grad_clip, writer=writer,
        )  # fmt: skip
        validated = args.val or epoch == args.epochs - 1
        if validated:
            metrics = validate(
                model, val_loader, conf=_val_conf(args), iou=args.iou, max_det=args.max_det,
                pre_nms_topk=args.pre_nms_topk, device=device, names=names, verbose=False,
            )  # fmt: skip
        fitness = metrics["AP"] if validated else -1.0
        # Same columns every epoch; metrics left empty where validation was skipped (val=False).
        row = {"epoch": epoch + 1, **losses, **{f"metrics/{k}": metrics[k] if validated else "" for k in ("AP", "AP50", "AP75")}}
        row["lr"] = optimizer.param_groups[0]["lr"]
        _append_csv(save_dir / "results.csv", row)
        for k, v in row.items():
            if k.startswith("metrics/") and validated:
                writer.add_scalar(k, v, epoch + 1)
        state = {
            "model_cfg": model_cfg.to_dict(),
            "names": names,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "iteration": scheduler.last_epoch,
            "best_fitness": max(best_fitness, fitness),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
            "train_args": args.to_dict(),
        }
        save_checkpoint(state, weights / "last.pt")
        if fitness > best_fitness:
            best_fitness = fitness
            save_checkpoint(state, weights / "best.pt")
        if args.save_period > 0 and (epoch + 1) % args.save_period == 0:
            save_checkpoint(state, weights / f"epoch{epoch + 1}.pt")
        scores = f"  AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}" if validated else ""
        LOGGER.info(f"epoch {epoch + 1}/{args.epochs}: loss {losses.get('loss/total', math.nan):.4f}{scores}")
    writer.close()
    LOGGER.info(f"{args.epochs} epochs done in {(time.time() - start) / 60:.1f} min; weights in {weights}")
    return {"save_dir": save_dir, "best": weights / "best.pt", "last": weights / "last.pt", "metrics": metrics, "names": names}


def _eval_size(imgsz: int | list[int]) -> int:
    """Multi-scale training evaluates at its largest size."""
    return imgsz if isinstance(imgsz, int) else max(imgsz)


def _val_conf(args: Args) -> float:
    return DEFAULT_CONF["val"] if args.conf is None else args.conf


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
