"""Training: a visible loop (train_one_epoch) and the small helpers it calls.

run_training() wires config -> data -> model -> criterion -> optimizer, resumes if asked,
then per epoch: train_one_epoch, validate, log (console, results.csv, TensorBoard),
checkpoint (atomic). Distributed runs (torchrun, SLURM, or `device=0,1,..` which launches
torchrun) train one process per GPU; `batch` is the total over all of them, and only rank 0
validates and writes anything. See docs/training.md.
"""

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import DEFAULT_CONF, Args, ConfigError, ModelConfig, model_config_from_dict, with_assigner
from ..criterion import OTACriterion, build_criterion
from ..datasets.data_yaml import load_data
from ..datasets.loader import build_dataloader
from ..models.build import build_detector
from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.dist import (
    barrier, broadcast_object, dist_env, init_distributed, is_dist, is_main, main_process_first, rank, world_size,
)  # fmt: skip
from ..utils.log import LOGGER, colorstr
from ..utils.paths import increment_path
from ..utils.torch_utils import AmpSettings, model_summary, resolve_amp, seed_everything, select_device
from .ema import ModelEMA
from .launch import launch_workers, needs_launch
from .resume import GracefulStop, TrainingStopped, restore_training, resume_checkpoint, set_rng_state, training_state
from .sampling import TrainSampler
from .schedule import LRSchedule, lr_factor, plan_iterations, scaled_lr
from .transfer import read_detector_checkpoint, transfer_weights
from .validator import validate

__all__ = ["run_training", "train_one_epoch", "build_optimizer", "lr_factor", "Loop", "EpochLog"]


def build_optimizer(model: nn.Module, args: Args) -> torch.optim.Optimizer:
    """SGD (or AdamW) with lr scaled linearly from batch 16; no weight decay on normalisation layers (detectron2)."""
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if isinstance(module, norm_types) else decay).append(p)
    lr = scaled_lr(args.lr0, args.batch)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(args.momentum, 0.999))
    raise ValueError(f"optimizer={args.optimizer!r}: use sgd or adamw")


@dataclass
class EpochLog:
    """Sums of the logged scalars over an epoch's steps; saved in a mid-epoch checkpoint, so the
    epoch's averages after a resume cover all of its steps, not only those after the resume."""

    sums: dict[str, float]
    steps: int = 0

    def add(self, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "steps": self.steps}


@dataclass
class Loop:
    """What train_one_epoch needs besides model, criterion, data and optimizer (built by run_training)."""

    net: nn.Module  # the bare model (EMA source); `model` may be its DDP / compiled wrapper
    schedule: LRSchedule
    amp: AmpSettings
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    device: torch.device
    total: int  # stop after this many iterations
    iters_per_epoch: int
    grad_clip: float
    save_period: int  # iterations; 0 = only at epoch ends
    save: Callable[[int, int, EpochLog], None]  # save(epoch, iteration, log): a mid-epoch last.pt
    stop: GracefulStop
    writer: SummaryWriter | None  # rank 0 only


def train_one_epoch(
    model: nn.Module, criterion: OTACriterion, loader, optimizer: torch.optim.Optimizer, loop: Loop,
    *, epoch: int, epochs: int, iteration: int, log: EpochLog | None = None,
) -> tuple[EpochLog, int, bool]:  # fmt: skip
    """Train from global `iteration` to the end of the epoch (or loop.total, or a stop signal),
    adding each step's scalars to `log` (a new one if None: the epoch starts here).

    Returns the log, the iteration reached and whether a signal asked to stop. A signal during
    the epoch's last iteration lets the epoch finish: the caller validates, logs and saves it."""
    model.train()
    log = EpochLog({}) if log is None else log
    stopped = False
    bar = tqdm(
        loader, desc=f"{epoch + 1}/{epochs}", total=loop.iters_per_epoch, initial=iteration - epoch * loop.iters_per_epoch,
        bar_format="{l_bar}{bar:20}{r_bar}", leave=True, disable=not is_main(),
    )  # fmt: skip
    for batch in bar:
        lr = loop.schedule.apply(optimizer, iteration)
        batch = batch.to(loop.device, non_blocking=True)
        step_start = time.perf_counter()
        with torch.autocast(loop.device.type, dtype=loop.amp.dtype, enabled=loop.amp.enabled):
            # channels_last: ~1.3x faster convolutions on CPU (oneDNN) and with AMP on tensor cores.
            outputs = model(batch.images.contiguous(memory_format=torch.channels_last))
        # Outside autocast: the assignment and the losses (and their normaliser) run in float32.
        loss, items, stats = criterion(
            outputs, batch.gt_boxes, batch.gt_labels, batch.gt_mask, batch.ignore_boxes, batch.ignore_mask
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {iteration} ({ {k: v.item() for k, v in items.items()} }); "
                "lower lr0 or raise warmup_iters"
            )
        optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()  # the scaler is a pass-through unless fp16
        if loop.grad_clip > 0:
            loop.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        loop.scaler.step(optimizer)
        loop.scaler.update()
        _check_finite_weights(loop.net, iteration)  # before any save: non-finite weights never reach a checkpoint
        iteration += 1
        if loop.ema is not None:
            loop.ema.update(loop.net)

        scalars = {**{f"loss/{k}": v.item() for k, v in items.items()}, "loss/total": loss.item()}
        # Every scalar the assigner reports (mean_k, pos_per_gt, ...); (B,)-shaped entries are skipped.
        scalars |= {f"assign/{k}": v.item() for k, v in stats.items() if torch.is_tensor(v) and v.dim() == 0}
        # Step = forward + assign + losses + backward + update; the .item()s above wait for the device.
        scalars["assign/time_share"] = scalars.get("assign/seconds", 0.0) / (time.perf_counter() - step_start)
        log.add(scalars)
        if loop.writer is not None:
            for k, v in scalars.items():
                loop.writer.add_scalar(k, v, iteration)
            loop.writer.add_scalar("lr", lr, iteration)
        bar.set_postfix_str(
            f"cls {items['cls']:.3f} box {items['box']:.3f} iou {items['iou']:.3f} "
            f"gts {int(stats['num_gts'])} k {stats['mean_k']:.1f} lr {lr:.2g}"
        )
        # Mid-epoch saves only: the epoch end saves anyway, after validation.
        if loop.save_period > 0 and iteration % loop.save_period == 0 and iteration % loop.iters_per_epoch and iteration < loop.total:
            loop.save(epoch, iteration, log)
        if iteration >= loop.total:
            break
        if loop.stop.requested(loop.device):
            stopped = True
            if iteration % loop.iters_per_epoch:  # mid-epoch: stop now; at its end the loop ends anyway
                break
    return log, iteration, stopped


def run_training(model_cfg: ModelConfig, args: Args, *, init_state: dict | None = None) -> dict:
    """Train per `args`; returns {'save_dir', 'best', 'last', 'metrics', 'names'}."""
    if args.resume:  # a run folder or checkpoint path (Detector.train turns resume=True into its model=)
        args = args.replace(resume=str(resume_checkpoint(args.resume)))
    if needs_launch(args):  # device=0,1,...: start one process per GPU and wait for them
        names = list(load_data(args.data).names)
        return launch_workers(model_cfg, args, _run_dir(args), names=names, init_state=init_state)
    env = dist_env()
    device = select_device(args.device, local_rank=env.local_rank if env else None)
    if env is not None:
        init_distributed(env, device)
    with main_process_first():  # a built-in dataset is generated once
        spec = load_data(args.data)
    names = list(spec.names)
    resumed = load_checkpoint(args.resume) if args.resume else None
    if resumed is not None:
        model_cfg = model_config_from_dict(resumed["model_cfg"], where=f"{args.resume}: model_cfg")
    model_cfg = with_assigner(model_cfg, args.assigner)  # the `assigner=` run key overrides the YAML's
    _set_determinism(args.deterministic)
    seed_everything(args.seed)

    pretrained = False if resumed is not None else args.pretrained  # a resumed run has its weights
    detector = read_detector_checkpoint(pretrained)  # pretrained=<otadet .pt>: the whole detector, not only a backbone
    net = build_detector(model_cfg, len(names), pretrained=False if detector else pretrained)
    if init_state is not None:
        net.load_state_dict(init_state)
    if detector is not None:
        transfer_weights(net, detector["model"], src_names=list(detector["names"]), dst_names=names,
                         keep_class_rows=args.keep_class_rows, source=str(pretrained))  # fmt: skip
    net.to(device, memory_format=torch.channels_last)
    if model_cfg.num_classes != len(names):
        LOGGER.info(f"{model_cfg.name}: num_classes {model_cfg.num_classes} -> {len(names)} from {spec.yaml_file.name}")
    if is_main():
        model_summary(net, args.imgsz if isinstance(args.imgsz, int) else max(args.imgsz), model_cfg.name)
    if is_dist() and device.type == "cuda" and any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # batch statistics over all GPUs (norm: bn)
    criterion = build_criterion(model_cfg, len(names), sync_timing=args.sync_timing)

    train_loader, sampler = _train_loader(spec, args, device)
    ipe = math.ceil(sampler.num_samples / train_loader.batch_size)  # iterations per epoch, per rank
    total, epochs = plan_iterations(args, ipe)
    optimizer = build_optimizer(net, args)
    schedule = LRSchedule.from_args(args, total)
    amp = resolve_amp(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scaler)
    ema = ModelEMA(net, decay=args.ema_decay, tau=float(args.ema_tau)) if args.ema else None
    iteration, best_fitness = 0, -1.0
    if resumed is not None:
        iteration, best_fitness = restore_training(resumed, net, optimizer, scaler, ema, total=total, args=args)
    model = _wrap(net, device, compile_model=args.compile)

    save_dir = broadcast_object(_run_dir(args) if is_main() else None)
    weights = save_dir / "weights"
    writer = None
    if is_main():
        weights.mkdir(parents=True, exist_ok=True)
        (save_dir / "args.yaml").write_text(yaml.safe_dump(args.to_dict(), sort_keys=False))
        (save_dir / "model.yaml").write_text(yaml.safe_dump(model_cfg.to_dict(), sort_keys=False))
        writer = SummaryWriter(str(save_dir))
        val_loader = build_dataloader(
            spec, args.split, imgsz=_eval_size(args.imgsz), max_size=args.max_size, batch=max(args.batch // world_size(), 1),
            workers=args.workers, shuffle=False, seed=args.seed,
        )  # fmt: skip
    LOGGER.info(
        f"{colorstr('train:')} {len(sampler.dataset)} images, {ipe} iterations/epoch, {total} iterations ({epochs} epochs), "
        f"batch {args.batch} ({world_size()} x {train_loader.batch_size}), imgsz {args.imgsz}, device {device}; results to {save_dir}\n"
        f"{schedule.describe()}; {amp.note}" + (f"; EMA decay {args.ema_decay}, tau {args.ema_tau}" if ema else "")
    )
    if args.iters > 0 and args.batch != 16:
        LOGGER.info(f"iters={args.iters} at batch {args.batch} sees {args.batch / 16:.2g}x the images of the same schedule at batch 16")

    def checkpoint(epoch_done: int, it: int, metrics: dict) -> dict:
        return training_state(
            net, ema, optimizer, scaler, model_cfg, names, args, epoch=epoch_done, iteration=it, best_fitness=best_fitness, metrics=metrics
        )

    def save_mid_epoch(epoch: int, it: int, log: EpochLog) -> None:
        if is_main():
            state = checkpoint(epoch, it, metrics) | {"epoch_log": log.state()}
            save_checkpoint(state, weights / "last.pt")
            save_checkpoint(state, weights / f"iter{it}.pt")

    metrics, start = {}, time.time()
    with GracefulStop() as stop:
        loop = Loop(net=net, schedule=schedule, amp=amp, scaler=scaler, ema=ema, device=device, total=total,
                    iters_per_epoch=ipe, grad_clip=args.grad_clip, save_period=args.save_period,
                    save=save_mid_epoch, stop=stop, writer=writer)  # fmt: skip
        if resumed is not None:
            set_rng_state(resumed["rng"])  # last: building the model above drew from the global RNG
        log = _resumed_log(resumed, iteration, ipe)
        try:
            for epoch in range(iteration // ipe, epochs):
                sampler.set_epoch(epoch, start=(iteration - epoch * ipe) * train_loader.batch_size)
                log, iteration, stopped = train_one_epoch(
                    model, criterion, train_loader, optimizer, loop, epoch=epoch, epochs=epochs, iteration=iteration, log=log
                )
                resume_hint = f"resume with `otadet train resume={save_dir}`"
                if stopped and iteration % ipe and iteration < total:
                    save_mid_epoch(epoch, iteration, log)
                    if is_main():
                        LOGGER.warning(f"saved {weights / 'last.pt'} at iteration {iteration}; {resume_hint}")
                    raise TrainingStopped(f"stopped at iteration {iteration}; {resume_hint}")
                validated = args.val or epoch == epochs - 1
                if is_main():
                    metrics, best_fitness = _end_epoch(
                        ema.module if ema else net, val_loader, args, names, writer, save_dir, checkpoint,
                        epoch=epoch, epochs=epochs, iteration=iteration, losses=log.means(), lr=optimizer.param_groups[0]["lr"],
                        validated=validated, best_fitness=best_fitness, device=device,
                    )  # fmt: skip
                log = None  # the next epoch starts its own
                barrier()  # the other ranks wait for rank 0's validation
                # A signal in the epoch's last iteration (or during its validation) stops here, the epoch complete.
                if (stopped or stop.requested(device)) and epoch < epochs - 1:
                    if is_main():
                        LOGGER.warning(f"epoch {epoch + 1} complete and saved in {weights / 'last.pt'}; {resume_hint}")
                    raise TrainingStopped(f"stopped after epoch {epoch + 1} (iteration {iteration}); {resume_hint}")
        finally:
            if writer is not None:
                writer.close()
    LOGGER.info(f"{iteration} iterations done in {(time.time() - start) / 60:.1f} min; weights in {weights}")
    return {"save_dir": save_dir, "best": weights / "best.pt", "last": weights / "last.pt", "metrics": metrics, "names": names}


def _end_epoch(
    model: nn.Module, val_loader, args: Args, names: list[str], writer: SummaryWriter, save_dir: Path, checkpoint,
    *, epoch: int, epochs: int, iteration: int, losses: dict, lr: float, validated: bool, best_fitness: float, device: torch.device,
) -> tuple[dict, float]:  # fmt: skip
    """Rank 0 at an epoch end: validate, log (results.csv, TensorBoard, console), save last/best."""
    metrics = {}
    if validated:  # save first: a COCO val takes minutes, and a stop or crash in it should lose nothing
        save_checkpoint(checkpoint(epoch + 1, iteration, metrics), save_dir / "weights" / "last.pt")
        metrics = validate(
            model, val_loader, conf=_val_conf(args), iou=args.iou, max_det=args.max_det,
            pre_nms_topk=args.pre_nms_topk, device=device, names=names, verbose=False,
        )  # fmt: skip
    fitness = metrics["AP"] if validated else -1.0
    # Same columns every epoch; metrics left empty where validation was skipped (val=False).
    row = {"epoch": epoch + 1, "iteration": iteration, **losses}
    row |= {f"metrics/{k}": metrics[k] if validated else "" for k in ("AP", "AP50", "AP75")}
    row["lr"] = lr
    _append_csv(save_dir / "results.csv", row)
    if validated:
        for k in ("AP", "AP50", "AP75"):
            writer.add_scalar(f"metrics/{k}", metrics[k], iteration)
    best = max(best_fitness, fitness)
    state = checkpoint(epoch + 1, iteration, metrics)
    state["best_fitness"] = best
    weights = save_dir / "weights"
    save_checkpoint(state, weights / "last.pt")
    if fitness > best_fitness or not (weights / "best.pt").exists():
        save_checkpoint(state, weights / "best.pt")
    scores = f"  AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}" if validated else ""
    LOGGER.info(f"epoch {epoch + 1}/{epochs} (iteration {iteration}): loss {losses.get('loss/total', math.nan):.4f}{scores}")
    return metrics, best


def _resumed_log(resumed: dict | None, iteration: int, ipe: int) -> EpochLog | None:
    """The running sums of the epoch a mid-epoch checkpoint stopped in (None: the epoch starts afresh)."""
    if resumed is None or iteration % ipe == 0 or "epoch_log" not in resumed:
        return None
    saved = resumed["epoch_log"]
    return EpochLog({k: float(v) for k, v in saved["sums"].items()}, int(saved["steps"]))


def _train_loader(spec, args: Args, device: torch.device) -> tuple[torch.utils.data.DataLoader, TrainSampler]:
    """The training DataLoader over this rank's share of each batch, and its resumable sampler."""
    if args.batch % world_size():
        raise ConfigError(f"batch={args.batch} is the total over {world_size()} processes and must divide evenly")
    sampler = TrainSampler(rank=rank(), world_size=world_size(), seed=args.seed)
    loader = build_dataloader(
        spec, "train", imgsz=args.imgsz, max_size=args.max_size, batch=args.batch // world_size(), workers=args.workers,
        shuffle=False, seed=args.seed, pin_memory=args.pin_memory and device.type == "cuda",
        sampler=sampler, wrap=sampler.wrap,
    )  # fmt: skip
    return loader, sampler


def _wrap(net: nn.Module, device: torch.device, *, compile_model: bool) -> nn.Module:
    """DDP in a distributed run, then torch.compile if asked; `net` stays the bare model."""
    model = net
    if is_dist():
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)
    return model


def _check_finite_weights(net: nn.Module, iteration: int) -> None:
    """Raise if a step left any parameter inf or NaN (a finite loss can still blow up the weights)."""
    largest = torch.nn.utils.get_total_norm([p.detach() for p in net.parameters()], norm_type=float("inf"))
    if not torch.isfinite(largest):
        raise FloatingPointError(
            f"the weights are not finite after the optimizer step at iteration {iteration}; nothing of this step was "
            "saved (weights/last.pt, if any, is the last good checkpoint) — lower lr0, raise warmup_iters or set grad_clip"
        )


def _run_dir(args: Args) -> Path:
    """A resumed run continues in its own folder; a new one gets runs/train/exp, exp2, ...
    exist_ok=True reuses a folder, but never one that holds another run's weights."""
    if args.resume:
        return Path(args.resume).resolve().parent.parent
    path = increment_path(Path(args.project) / "train" / args.name, exist_ok=args.exist_ok)
    held = [p.name for p in (path / "weights").glob("*.pt")] if (path / "weights").is_dir() else []
    if held:
        raise ConfigError(
            f"exist_ok=True: {path} holds another run's weights ({', '.join(sorted(held))}); a new run never overwrites "
            f"them — continue it with resume={path}, pick another name=, or delete the folder"
        )
    return path


def _set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


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
