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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import Args, ConfigError, ModelConfig, mode_conf
from ..criterion import OTACriterion, build_criterion
from ..datasets.loader import build_dataloader
from ..models.build import build_detector
from ..utils.checkpoint import save_checkpoint
from ..utils.dist import (
    barrier, broadcast_object, dist_env, init_distributed, is_dist, is_main, main_process_first, rank, world_size,
)  # fmt: skip
from ..utils.log import LOGGER, colorstr
from ..utils.paths import increment_path
from ..utils.torch_utils import AmpSettings, model_summary, resolve_amp, seed_everything, select_device
from .ema import ModelEMA
from .launch import launch_workers, needs_launch
from .resolve import Resumed, Run
from .resume import GracefulStop, TrainingStopped, restore_training, set_rng_state, training_state
from .sampling import TrainSampler
from .schedule import LRSchedule, lr_factor, plan_iterations, scaled_lr
from .transfer import read_detector_checkpoint, transfer_weights
from .validator import validate

__all__ = ["run_training", "train_one_epoch", "build_optimizer", "lr_factor", "Loop", "EpochLog", "Progress", "Recorder"]


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
        _step(model, loss, items, optimizer, loop, iteration)
        iteration += 1
        scalars = _step_scalars(loss, items, stats, step_start)
        log.add(scalars)
        _log_step(loop, bar, scalars, items, stats, lr, iteration)
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


def _step(model: nn.Module, loss: Tensor, items: dict, optimizer: torch.optim.Optimizer, loop: Loop, iteration: int) -> None:
    """Backward, clip, optimizer step (through the GradScaler), then the EMA; nothing non-finite passes."""
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
    if loop.ema is not None:
        loop.ema.update(loop.net)


def _step_scalars(loss: Tensor, items: dict, stats: dict, step_start: float) -> dict[str, float]:
    """The step's logged scalars: the losses and every 0-dim statistic of the assigner."""
    scalars = {**{f"loss/{k}": v.item() for k, v in items.items()}, "loss/total": loss.item()}
    # Every scalar the assigner reports (mean_k, pos_per_gt, ...); (B,)-shaped entries are skipped.
    scalars |= {f"assign/{k}": v.item() for k, v in stats.items() if torch.is_tensor(v) and v.dim() == 0}
    # Step = forward + assign + losses + backward + update; the .item()s above wait for the device.
    scalars["assign/time_share"] = scalars.get("assign/seconds", 0.0) / (time.perf_counter() - step_start)
    return scalars


def _log_step(loop: Loop, bar, scalars: dict, items: dict, stats: dict, lr: float, iteration: int) -> None:
    if loop.writer is not None:
        for k, v in scalars.items():
            loop.writer.add_scalar(k, v, iteration)
        loop.writer.add_scalar("lr", lr, iteration)
    bar.set_postfix_str(
        f"cls {items['cls']:.3f} box {items['box']:.3f} iou {items['iou']:.3f} "
        f"gts {int(stats['num_gts'])} k {stats['mean_k']:.1f} lr {lr:.2g}"
    )


@dataclass
class Progress:
    """The run's state between steps and epochs: what every checkpoint records besides the weights."""

    iteration: int = 0  # optimizer steps done
    best_fitness: float = -1.0  # best validation AP so far (-1: none yet)
    metrics: dict = field(default_factory=dict)  # the last epoch end's validation metrics ({} if it did not validate)


@dataclass
class Recorder:
    """What rank 0 writes of a run (checkpoints, results.csv, TensorBoard, console lines), each
    made from the training objects and `progress` as they are when it writes."""

    save_dir: Path
    progress: Progress
    net: nn.Module  # the bare model
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    model_cfg: ModelConfig
    names: list[str]
    args: Args
    writer: SummaryWriter | None = None  # rank 0 only
    val_loader: torch.utils.data.DataLoader | None = None  # rank 0 only

    @property
    def weights(self) -> Path:
        return self.save_dir / "weights"

    def state(self, epoch_done: int, iteration: int, metrics: dict) -> dict:
        return training_state(
            self.net, self.ema, self.optimizer, self.scaler, self.model_cfg, self.names, self.args,
            epoch=epoch_done, iteration=iteration, best_fitness=self.progress.best_fitness, metrics=metrics,
        )  # fmt: skip

    def save_mid_epoch(self, epoch: int, iteration: int, log: EpochLog) -> None:
        """last.pt and iter<N>.pt within an epoch, with the epoch's running loss sums (Loop.save)."""
        if is_main():
            state = self.state(epoch, iteration, self.progress.metrics) | {"epoch_log": log.state()}
            save_checkpoint(state, self.weights / "last.pt")
            save_checkpoint(state, self.weights / f"iter{iteration}.pt")

    def end_epoch(self, epoch: int, epochs: int, losses: dict, lr: float, *, validated: bool, device: torch.device) -> None:
        """Rank 0 at an epoch end: validate, log (results.csv, TensorBoard, console), save last/best."""
        iteration, metrics = self.progress.iteration, {}
        if validated:  # save first: a COCO val takes minutes, and a stop or crash in it should lose nothing
            save_checkpoint(self.state(epoch + 1, iteration, metrics), self.weights / "last.pt")
            metrics = validate(
                self.ema.module if self.ema else self.net, self.val_loader, conf=mode_conf(self.args.conf, "val"),
                iou=self.args.iou, max_det=self.args.max_det, pre_nms_topk=self.args.pre_nms_topk, device=device,
                names=self.names, verbose=False,
            )  # fmt: skip
        fitness = metrics["AP"] if validated else -1.0
        # Same columns every epoch; metrics left empty where validation was skipped (val=False).
        row = {"epoch": epoch + 1, "iteration": iteration, **losses}
        row |= {f"metrics/{k}": metrics[k] if validated else "" for k in ("AP", "AP50", "AP75")}
        row["lr"] = lr
        _append_csv(self.save_dir / "results.csv", row)
        if validated:
            for k in ("AP", "AP50", "AP75"):
                self.writer.add_scalar(f"metrics/{k}", metrics[k], iteration)
        improved = fitness > self.progress.best_fitness
        self.progress.best_fitness, self.progress.metrics = max(self.progress.best_fitness, fitness), metrics
        state = self.state(epoch + 1, iteration, metrics)
        save_checkpoint(state, self.weights / "last.pt")
        if improved or not (self.weights / "best.pt").exists():
            save_checkpoint(state, self.weights / "best.pt")
        scores = f"  AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}" if validated else ""
        LOGGER.info(f"epoch {epoch + 1}/{epochs} (iteration {iteration}): loss {losses.get('loss/total', math.nan):.4f}{scores}")


def run_training(run: Run) -> dict:
    """Train as `run` says (engine/resolve.py: args, model config, data, the resumed checkpoint or
    the fine-tuned weights); returns {'save_dir', 'best', 'last', 'metrics', 'names'}."""
    args = run.args
    if needs_launch(args):  # device=0,1,...: start one process per GPU and wait for them
        return launch_workers(run.model_cfg, args, _run_dir(args), names=list(run.data.names), init_state=run.init_state)
    env = dist_env()
    device = select_device(args.device, local_rank=env.local_rank if env else None)
    if env is not None:
        init_distributed(env, device)
    with main_process_first():  # a built-in dataset is generated once
        spec = run.data
    names = list(spec.names)
    init_state = run.init_state  # the fine-tuned weights, drawn under their own seed: before seeding the run
    _set_determinism(args.deterministic)
    seed_everything(args.seed)
    net = _network(run, names, init_state, device)
    criterion = build_criterion(run.model_cfg, len(names), sync_timing=args.sync_timing)
    train_loader, sampler = _train_loader(spec, args, device)
    ipe = math.ceil(sampler.num_samples / train_loader.batch_size)  # iterations per epoch, per rank
    total, epochs = plan_iterations(args, ipe)
    optimizer = build_optimizer(net, args)
    amp = resolve_amp(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scaler)
    ema = ModelEMA(net, decay=args.ema_decay, tau=float(args.ema_tau)) if args.ema else None
    progress = Progress()
    if run.resumed is not None:
        progress.iteration, progress.best_fitness = restore_training(run.resumed.state, net, optimizer, scaler, ema, total=total, args=args)
    model = _wrap(net, device, compile_model=args.compile)
    save_dir = broadcast_object(_run_dir(args) if is_main() else None)
    recorder = Recorder(save_dir, progress, net, ema, optimizer, scaler, run.model_cfg, names, args)
    if is_main():
        _open_run_folder(recorder, spec, run.imgsz)
    schedule = LRSchedule.from_args(args, total)
    _log_start(args, sampler, train_loader, ipe, total, epochs, device, save_dir, schedule, amp, ema)
    with GracefulStop() as stop:
        loop = Loop(net=net, schedule=schedule, amp=amp, scaler=scaler, ema=ema, device=device, total=total,
                    iters_per_epoch=ipe, grad_clip=args.grad_clip, save_period=args.save_period,
                    save=recorder.save_mid_epoch, stop=stop, writer=recorder.writer)  # fmt: skip
        if run.resumed is not None:
            set_rng_state(run.resumed.state["rng"])  # last: building the model above drew from the global RNG
        start = time.time()
        try:
            _epochs(model, criterion, train_loader, sampler, optimizer, loop, recorder, epochs=epochs, resumed=run.resumed)
        finally:
            if recorder.writer is not None:
                recorder.writer.close()
    weights = recorder.weights
    LOGGER.info(f"{progress.iteration} iterations done in {(time.time() - start) / 60:.1f} min; weights in {weights}")
    return {"save_dir": save_dir, "best": weights / "best.pt", "last": weights / "last.pt", "metrics": progress.metrics, "names": names}


def _epochs(
    model: nn.Module, criterion: OTACriterion, loader, sampler: TrainSampler, optimizer: torch.optim.Optimizer, loop: Loop,
    recorder: Recorder, *, epochs: int, resumed: Resumed | None,
) -> None:  # fmt: skip
    """The epochs from the resumed iteration on: train, then (rank 0) validate, log and save; a stop
    signal mid-epoch saves and raises TrainingStopped, one in an epoch's last iteration lets it finish."""
    progress, ipe = recorder.progress, loop.iters_per_epoch
    log = _resumed_log(resumed.state if resumed else None, progress.iteration, ipe)
    resume_hint = f"resume with `otadet train resume={recorder.save_dir}`"
    for epoch in range(progress.iteration // ipe, epochs):
        sampler.set_epoch(epoch, start=(progress.iteration - epoch * ipe) * loader.batch_size)
        log, progress.iteration, stopped = train_one_epoch(
            model, criterion, loader, optimizer, loop, epoch=epoch, epochs=epochs, iteration=progress.iteration, log=log
        )
        iteration = progress.iteration
        if stopped and iteration % ipe and iteration < loop.total:
            recorder.save_mid_epoch(epoch, iteration, log)
            if is_main():
                LOGGER.warning(f"saved {recorder.weights / 'last.pt'} at iteration {iteration}; {resume_hint}")
            raise TrainingStopped(f"stopped at iteration {iteration}; {resume_hint}")
        if is_main():
            lr = optimizer.param_groups[0]["lr"]
            recorder.end_epoch(epoch, epochs, log.means(), lr, validated=recorder.args.val or epoch == epochs - 1, device=loop.device)
        log = None  # the next epoch starts its own
        barrier()  # the other ranks wait for rank 0's validation
        # A signal in the epoch's last iteration (or during its validation) stops here, the epoch complete.
        if (stopped or loop.stop.requested(loop.device)) and epoch < epochs - 1:
            if is_main():
                LOGGER.warning(f"epoch {epoch + 1} complete and saved in {recorder.weights / 'last.pt'}; {resume_hint}")
            raise TrainingStopped(f"stopped after epoch {epoch + 1} (iteration {iteration}); {resume_hint}")


def _network(run: Run, names: list[str], init_state: dict | None, device: torch.device) -> nn.Module:
    """The network training starts from, on `device`: the resumed run's, else built for `names` with
    the fine-tuned weights or a pretrained otadet detector (pretrained=<.pt>) carried over."""
    args, model_cfg = run.args, run.model_cfg
    if run.resumed is not None:  # restore_training loads the rest of its state
        if len(run.resumed.names) != len(names):
            raise ConfigError(
                f"resume: {run.resumed.path} was trained on {len(run.resumed.names)} classes but {args.data} has "
                f"{len(names)}: resume with the run's own data, or fine-tune with model={run.resumed.path}"
            )
        net = run.resumed.net
    else:
        detector = read_detector_checkpoint(args.pretrained)  # pretrained=<otadet .pt>: the whole detector, not only a backbone
        net = build_detector(model_cfg, len(names), pretrained=False if detector else args.pretrained)
        if init_state is not None:
            net.load_state_dict(init_state)
        if detector is not None:
            transfer_weights(net, detector["model"], src_names=list(detector["names"]), dst_names=names,
                             keep_class_rows=args.keep_class_rows, source=str(args.pretrained))  # fmt: skip
    net.to(device, memory_format=torch.channels_last)
    if model_cfg.num_classes != len(names):
        LOGGER.info(f"{model_cfg.name}: num_classes {model_cfg.num_classes} -> {len(names)} from {run.data.yaml_file.name}")
    if is_main():
        model_summary(net, run.imgsz, model_cfg.name)
    if is_dist() and device.type == "cuda" and any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # batch statistics over all GPUs (norm: bn)
    return net


def _open_run_folder(recorder: Recorder, spec, imgsz: int) -> None:
    """Rank 0: weights/, args.yaml, model.yaml, the TensorBoard writer and the validation loader."""
    args = recorder.args
    recorder.weights.mkdir(parents=True, exist_ok=True)
    (recorder.save_dir / "args.yaml").write_text(yaml.safe_dump(args.to_dict(), sort_keys=False))
    (recorder.save_dir / "model.yaml").write_text(yaml.safe_dump(recorder.model_cfg.to_dict(), sort_keys=False))
    recorder.writer = SummaryWriter(str(recorder.save_dir))
    recorder.val_loader = build_dataloader(
        spec, args.split, imgsz=imgsz, max_size=args.max_size, batch=max(args.batch // world_size(), 1),
        workers=args.workers, shuffle=False, seed=args.seed,
    )  # fmt: skip


def _log_start(args: Args, sampler, loader, ipe: int, total: int, epochs: int, device, save_dir: Path, schedule, amp, ema) -> None:
    LOGGER.info(
        f"{colorstr('train:')} {len(sampler.dataset)} images, {ipe} iterations/epoch, {total} iterations ({epochs} epochs), "
        f"batch {args.batch} ({world_size()} x {loader.batch_size}), imgsz {args.imgsz}, device {device}; results to {save_dir}\n"
        f"{schedule.describe()}; {amp.note}" + (f"; EMA decay {args.ema_decay}, tau {args.ema_tau}" if ema else "")
    )
    if args.iters > 0 and args.batch != 16:
        LOGGER.info(f"iters={args.iters} at batch {args.batch} sees {args.batch / 16:.2g}x the images of the same schedule at batch 16")


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


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
