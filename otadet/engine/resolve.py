"""Resolve once: what one Detector call runs with (as detectron2 resumes in one place).

Every mode of `Detector` (train, val, predict, export, assign, and a resumed train) starts with
`resolve(detector, mode, kwargs)` and hands the `Run` it returns to the mode; nothing after it
finds a run folder, reads a checkpoint or a data YAML, or falls back to a default again.

    args       the run arguments, later wins:
               {**cfg/default.yaml, **model YAML train:, **inherited, **resumed, **kwargs}
               - inherited: a trained checkpoint (or an exported file) passes INHERITED (data,
                 imgsz, max_size) on to the val/predict/export runs made with it;
               - resumed: train(resume=...) continues a run with every train arg it was started
                 with that this version knows, then the kwargs given (e.g. a longer epochs=).
    model_cfg  the network's config: a resumed run's own; for train with the `assigner=` key applied
    names      the network's class names
    conf       the score threshold: args.conf, or the mode's default (config.mode_conf)
    imgsz      the one shorter side of val, predict, export and the summary (config.eval_size)
    data       the DataSpec of args.data, read on first use, once
    resumed    train(resume=...): the checkpoint, found and read once, and the network it holds
    init_state fine-tuning a trained detector: its weights carried over to the data's classes
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import Args, ModelConfig, default_args, eval_size, make_args, mode_conf, with_assigner
from ..datasets.data_yaml import DataSpec, load_data
from ..models.build import build_detector
from ..utils.checkpoint import load_checkpoint
from ..utils.log import LOGGER
from .resume import resume_checkpoint
from .transfer import detector_from_checkpoint, transfer_weights

__all__ = ["INHERITED", "Run", "Resumed", "FineTune", "resolve", "run_args", "inherited_args", "resumed_args"]

# Run arguments a trained checkpoint (or an exported file) passes on to val/predict/export unless overridden.
INHERITED = ("data", "imgsz", "max_size")
# The score threshold each mode falls back to where conf is null (train validates as val does).
_CONF_MODE = {"train": "val", "val": "val", "predict": "predict", "export": "predict", "assign": "predict"}


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a train(resume=...) continues, read once."""

    path: Path
    state: dict  # as saved: weights, optimizer, scaler, EMA, RNG states, epoch_log, train_args
    model_cfg: ModelConfig
    names: list[str]
    net: nn.Module  # model_cfg built and loaded with state['model'] (transfer.detector_from_checkpoint)


@dataclass(frozen=True)
class FineTune:
    """The trained detector a new run starts from (Detector.train on a checkpoint or converted model)."""

    state: dict[str, Tensor]  # its state dict
    names: list[str]
    source: str


@dataclass(frozen=True)
class Run:
    """One Detector call, resolved (see the module docstring)."""

    mode: str
    args: Args
    model_cfg: ModelConfig | None  # None: an exported file
    names: list[str]
    conf: float
    imgsz: int
    resumed: Resumed | None = None
    fine_tune: FineTune | None = None

    @cached_property
    def data(self) -> DataSpec:
        return load_data(self.args.data)

    @cached_property
    def init_state(self) -> dict[str, Tensor] | None:
        """The fine-tuned detector's weights in a network for the data's classes (engine/transfer.py);
        the re-initialised class layer is drawn under its own seed, the same run to run."""
        if self.fine_tune is None:
            return None
        names = list(self.data.names)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed)
            net = build_detector(self.model_cfg, len(names), pretrained=False)
        source = self.fine_tune
        transfer_weights(
            net, source.state, src_names=source.names, dst_names=names, keep_class_rows=self.args.keep_class_rows, source=source.source
        )
        return net.state_dict()


def resolve(detector, mode: str, kwargs: dict) -> Run:
    """The Run of `detector`.<mode>(**kwargs); `detector` is an engine.model.Detector."""
    resumed = _read_resumed(kwargs["resume"], detector.source) if mode == "train" and kwargs.get("resume") else None
    if resumed is not None:
        kwargs = resumed_args(resumed.state.get("train_args", {}), kwargs, resumed.path)
    args = run_args(detector, kwargs, mode)
    model_cfg = resumed.model_cfg if resumed is not None else detector.cfg
    fine_tune = None
    if mode == "train":
        model_cfg = with_assigner(model_cfg, args.assigner)  # the `assigner=` run key overrides the YAML's
        if detector.trained and not args.resume:
            fine_tune = FineTune(detector.net.state_dict(), list(detector.names), detector.source)
    names = resumed.names if resumed is not None else list(detector.names)
    return Run(mode, args, model_cfg, names, mode_conf(args.conf, _CONF_MODE[mode]), eval_size(args.imgsz), resumed, fine_tune)


def run_args(detector, overrides: dict, mode: str = "") -> Args:
    """The precedence of the module docstring, without the resumed layer (resolve merges it into `overrides`)."""
    from ..datasets.image_io import set_max_pixels

    model_defaults = {**(detector.cfg.train if detector.cfg is not None else {}), **detector.train_args}
    args = make_args(overrides, model_defaults=model_defaults, where=f"{mode} arguments")
    set_max_pixels(args.max_pixels)  # read by every image read of this process and its forked workers
    return args


def inherited_args(train_args: dict) -> dict:
    """The run arguments a checkpoint's `train_args` pass on to the runs made with it."""
    return {k: v for k, v in train_args.items() if k in INHERITED}


def resumed_args(saved: dict, overrides: dict, path: Path) -> dict:
    """Train kwargs to resume with: {**the checkpoint's train args this version knows, **overrides}, resume = its path."""
    known = default_args()
    dropped = sorted(set(saved) - set(known))
    if dropped:
        LOGGER.warning(f"resume: {path} has train args this version does not know, ignored: {dropped}")
    given = {k: v for k, v in overrides.items() if k != "resume"}
    changed = {k: (saved[k], v) for k, v in given.items() if k in saved and saved[k] != v}
    if changed:
        LOGGER.info("resume: overriding " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return {**{k: v for k, v in saved.items() if k in known}, **given, "resume": str(path)}


def _read_resumed(resume: bool | str, source: str) -> Resumed:
    path = resume_checkpoint(resume, source)
    state = load_checkpoint(path)
    model_cfg, names, net = detector_from_checkpoint(state, str(path))
    return Resumed(path, state, model_cfg, names, net)
