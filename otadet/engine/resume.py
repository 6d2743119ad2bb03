"""Exact resume and no lost work: which checkpoint to resume, RNG states, and graceful stop on signals.

`resume=True model=runs/train/exp/weights/last.pt` or `resume=runs/train/exp` continues the
run at the iteration after the one saved: the trainer restores the model, optimizer,
GradScaler, EMA, best metric, the RNG states below, and the data position (epoch and batch;
the order and augmentations are functions of (seed, epoch, image), see sampling.py). The LR
schedule is a function of the iteration (schedule.py). The run's own train args are reused;
keys given with resume= override them (e.g. a longer `epochs` extends the schedule): the
checkpoint is found and read once, by engine/resolve.py.
"""

import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from torch import nn

from ..config import Args, ConfigError, ModelConfig
from ..utils.dist import any_rank, world_size
from ..utils.log import LOGGER, colorstr
from .ema import ModelEMA

__all__ = [
    "resume_checkpoint",
    "training_state",
    "restore_training",
    "rng_state",
    "set_rng_state",
    "GracefulStop",
    "TrainingStopped",
]


def resume_checkpoint(resume: bool | str, source: str | None = None) -> Path:
    """The checkpoint to resume: `resume` as a run folder (-> weights/last.pt) or a .pt file, or
    with resume=True the `source` the Detector was loaded from."""
    if resume is True:
        if source is None or Path(source).suffix.lower() not in (".pt", ".pth"):
            raise ValueError(
                f"resume=True needs model= to be a checkpoint (got {source!r}): "
                "`otadet train resume=True model=runs/train/exp/weights/last.pt` or `otadet train resume=runs/train/exp`"
            )
        path = Path(source)
    else:
        path = Path(str(resume))
        if path.is_dir():
            path = path / "weights" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume!r}: checkpoint {path} does not exist; pass a run folder or a last.pt")
    return path


def training_state(
    net: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    model_cfg: ModelConfig, names: list[str], args: Args, *, epoch: int, iteration: int, best_fitness: float, metrics: dict,
) -> dict:  # fmt: skip
    """Everything to deploy ('model': the EMA weights when ema=True) and to resume exactly."""
    state = {
        "model_cfg": model_cfg.to_dict(),
        "names": names,
        "model": (ema.module if ema is not None else net).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,  # completed epochs
        "iteration": iteration,  # optimizer steps done; training resumes at this index
        "best_fitness": best_fitness,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "train_args": args.to_dict(),
        "world_size": world_size(),
        "rng": rng_state(),
    }
    if ema is not None:
        state["train_model"] = net.state_dict()  # the raw weights the optimizer steps
        state["ema_updates"] = ema.updates
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def restore_training(
    state: dict, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ema: ModelEMA | None,
    *, total: int, args: Args,
) -> tuple[int, float]:  # fmt: skip
    """Load a checkpoint's training state; returns (iteration, best_fitness)."""
    iteration = int(state["iteration"])
    if iteration >= total:
        raise ConfigError(
            f"resume: {args.resume} already finished {iteration} of {total} iterations; "
            "pass a larger epochs= (or iters=) to extend the schedule"
        )
    net.load_state_dict(state.get("train_model", state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        if "ema_updates" in state:
            ema.load_state_dict({"model": state["model"], "updates": state["ema_updates"]})
        else:
            LOGGER.warning("resume: the checkpoint has no EMA; starting the average from its weights")
    if scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    saved = state.get("train_args", {})
    if saved.get("batch") != args.batch or state.get("world_size", 1) != world_size():
        LOGGER.warning("resume: batch or number of processes changed; the data order after resuming differs from the original run")
    LOGGER.info(f"{colorstr('resume:')} {args.resume} at iteration {iteration} of {total} (best AP {state['best_fitness']:.4f})")
    return iteration, float(state["best_fitness"])


def rng_state() -> dict:
    """Every global RNG a training step could touch, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            LOGGER.warning(f"resume: {len(cuda)} saved CUDA RNG states for {torch.cuda.device_count()} GPUs; not restored")


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving last.pt (the CLI exits with 130)."""


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM asks the loop to stop after the current
    iteration (it then saves last.pt and raises TrainingStopped). A second signal more than
    `echo_window` seconds later stops at once; one sooner is the same stop arriving twice
    (Ctrl-C reaches torchrun and its workers, and torchrun passes it on to them again)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, echo_window: float = 2.0):
        self.signal: int | None = None
        self.echo_window = echo_window
        self._first = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no graceful stop
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal, self._first = signum, time.monotonic()
            LOGGER.warning(f"\n{name}: stopping after this iteration and saving last.pt ({name} again to stop at once)")
        elif time.monotonic() - self._first > self.echo_window:
            raise KeyboardInterrupt(f"second {name}: stopped without saving")

    def requested(self, device: torch.device) -> bool:
        """True on every rank once any rank got a signal (a collective in distributed runs)."""
        return any_rank(self.signal is not None, device)
