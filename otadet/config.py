"""Configuration: the model YAML schema and the run arguments, validated once at the edge.

Two sources, one rule each:
- A model YAML (cfg/ota_*.yaml) is checked against the frozen dataclasses below. Assigner
  knobs are checked against the assigner's knobs dataclass (otadet/knobs.py), so the paper's
  defaults live in exactly one place.
- Run arguments (train/val/predict/export) come from cfg/default.yaml, which holds every key
  and its default; a value's type is its default's type. A model YAML may carry a `train:`
  mapping of run-argument defaults for that model (e.g. a CPU-sized image size).
Unknown keys fail with the closest valid names (difflib), wrong types name key and type.

The config describes; it imports nothing that builds. The names it checks a YAML against (backbone
architectures, norms, DCN stages, assigners) are defined here or in otadet/knobs.py, and the
builders (otadet.models, otadet.assign) take them from here.
"""

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .knobs import ASSIGNER_KNOBS
from .utils.checks import ConfigError, check_keys, read_yaml
from .utils.paths import asset_dir, find_asset

__all__ = [
    "Args",
    "DEFAULT_CONF",
    "mode_conf",
    "eval_size",
    "SCHEDULES",
    "BackboneConfig",
    "FPNConfig",
    "HeadConfig",
    "InputConfig",
    "LossConfig",
    "ModelConfig",
    "ConfigError",
    "load_model_config",
    "model_config_from_dict",
    "with_assigner",
    "default_args",
    "make_args",
    "check_keys",
    "read_yaml",
]


# ----------------------------------------------------------------------------- model schema


# What the builders in otadet.models can make (models/backbone.py maps each name to its module).
ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_64x4d")
NORMS = ("frozen_bn", "bn")
DCN_STAGES = (3, 4, 5)  # stages that may carry DCN: c3-c5 = torchvision layer2-layer4


@dataclass(frozen=True)
class BackboneConfig:
    arch: str = "resnet50"  # one of ARCHS
    norm: str = "frozen_bn"  # frozen_bn (pretrained recipe) | bn (from scratch)
    freeze_at: int = 2  # 0 none, 1 stem, 2 stem + res2 (detectron2)
    # A local torchvision state-dict file, or 'torchvision' / 'torchvision:IMAGENET1K_V2' for
    # torchvision's ImageNet weights from its local cache; never downloaded (models/backbone.py).
    pretrained: str | None = None
    dcn_stages: list = field(default_factory=list)  # stages (3, 4, 5 = c3-c5) whose 3x3 convs are DCNv2
    # MSRA ResNet (the original Caffe model, detectron2's default): a bottleneck's stride sits in
    # its first 1x1 conv, not in the 3x3 (torchvision's "ResNet v1.5").
    stride_in_1x1: bool = False


@dataclass(frozen=True)
class FPNConfig:
    channels: int = 256


@dataclass(frozen=True)
class HeadConfig:
    channels: int = 256  # must equal fpn.channels
    num_convs: int = 4
    gn_groups: int = 32
    prior_prob: float = 0.01
    reg_activation: str = "relu"  # relu | exp (box_coder ltrb; delta regresses raw deltas)
    # ltrb: FCOS, distances from the point to the box sides; delta: RetinaNet, (dx, dy, dw, dh)
    # from one square anchor per point (detectron2's box coder), as the paper's Table 1 last row.
    box_coder: str = "ltrb"
    anchor_scale: float = 8.0  # box_coder delta: anchor side = anchor_scale * stride
    dcn_last: bool = False  # last conv of each tower is DCNv2 (paper Table 5)
    # Anchor point of cell (i, j) at ((j + point_offset) * stride, (i + point_offset) * stride):
    # the cell centre (FCOS); torchvision's FCOS and cvpods put it at the cell corner, 0.0.
    point_offset: float = 0.5
    level_scales: bool = True  # a learnable scale per FPN level on the regression (FCOS); torchvision's FCOS has none
    # What the branch on the regression tower predicts, trained with BCE and multiplied into the
    # score: iou (the paper's IoU branch: IoU of the decoded box with its target) | centerness (FCOS).
    quality: str = "iou"


@dataclass(frozen=True)
class InputConfig:
    """What the network's first conv expects. The data pipeline always delivers RGB in [0, 255]
    minus the ImageNet mean over its std (datasets/transforms.py); a model trained on another
    convention converts in its first layer (models/input_norm.py), so the same image tensor
    feeds every model, and the exported graph too."""

    channel_order: str = "rgb"  # rgb (torchvision) | bgr (caffe, detectron2, cvpods)
    pixel_mean: list = field(default_factory=lambda: [123.675, 116.28, 103.53])  # 0-255 units, in channel_order
    pixel_std: list = field(default_factory=lambda: [58.395, 57.12, 57.375])  # caffe models: [1, 1, 1]


@dataclass(frozen=True)
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    giou_weight: float = 2.0
    iou_branch_weight: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ota"
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    # Assigner name and knob overrides; the defaults are the function's (otadet.assign).
    assigner: dict = field(default_factory=lambda: {"name": "ota"})
    loss: LossConfig = field(default_factory=LossConfig)
    # Run-argument defaults for this model (keys of cfg/default.yaml), e.g. imgsz, batch.
    train: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BOX_CODERS = ("ltrb", "delta")
_SECTIONS = {"backbone": BackboneConfig, "fpn": FPNConfig, "head": HeadConfig, "input": InputConfig, "loss": LossConfig}
QUALITIES = ("iou", "centerness")
CHANNEL_ORDERS = ("rgb", "bgr")


def _check_type(value: Any, expected: Any, key: str, where: str) -> Any:
    """Validate one value against a field's type (a class, a `X | None` union or a Literal of
    allowed values); ints pass as floats."""
    if get_origin(expected) is Literal:
        allowed = get_args(expected)
        if value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}: '{key}' must be one of {', '.join(map(repr, allowed))}, got {value!r}{hint}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected in (int, float):
        raise ConfigError(f"{where}: '{key}' must be {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        name = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"{where}: '{key}' must be {name}, got {type(value).__name__} {value!r}")
    return value


def model_config_from_dict(data: dict, where: str = "model config") -> ModelConfig:
    """Validate a plain dict (from a YAML or a checkpoint) into a ModelConfig."""
    check_keys(data, {f.name for f in dataclasses.fields(ModelConfig)}, where)
    kwargs = {}
    for key, value in data.items():
        if key in _SECTIONS:
            cls = _SECTIONS[key]
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
            fields = {f.name: f for f in dataclasses.fields(cls)}
            check_keys(value, fields, f"{where}: {key}")
            kwargs[key] = cls(**{k: _check_type(v, fields[k].type, f"{key}.{k}", where) for k, v in value.items()})
        elif key == "assigner":
            kwargs[key] = _check_assigner(value, where)
        elif key == "train":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: 'train' must be a mapping of run arguments, got {value!r}")
            kwargs[key] = _check_run_args(value, f"{where}: train")
        else:
            field_type = {f.name: f.type for f in dataclasses.fields(ModelConfig)}[key]
            kwargs[key] = _check_type(value, field_type, key, where)
    cfg = ModelConfig(**kwargs)
    if cfg.backbone.arch not in ARCHS:
        check_keys({cfg.backbone.arch: 0}, ARCHS, f"{where}: backbone.arch")
    if cfg.backbone.norm not in NORMS:
        check_keys({cfg.backbone.norm: 0}, NORMS, f"{where}: backbone.norm")
    if cfg.head.reg_activation not in ("relu", "exp"):
        check_keys({cfg.head.reg_activation: 0}, ("relu", "exp"), f"{where}: head.reg_activation")
    if cfg.head.box_coder not in BOX_CODERS:
        check_keys({cfg.head.box_coder: 0}, BOX_CODERS, f"{where}: head.box_coder")
    if cfg.backbone.stride_in_1x1 and cfg.backbone.arch in ("resnet10", "resnet18", "resnet34"):
        raise ConfigError(f"{where}: backbone.stride_in_1x1 needs a bottleneck ResNet (resnet50 and up), not {cfg.backbone.arch}")
    if cfg.head.quality not in QUALITIES:
        check_keys({cfg.head.quality: 0}, QUALITIES, f"{where}: head.quality")
    if cfg.input.channel_order not in CHANNEL_ORDERS:
        check_keys({cfg.input.channel_order: 0}, CHANNEL_ORDERS, f"{where}: input.channel_order")
    for key in ("pixel_mean", "pixel_std"):
        values = getattr(cfg.input, key)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or (
            key == "pixel_std" and min(values) <= 0
        ):
            raise ConfigError(f"{where}: input.{key} must be 3 numbers in 0-255 units (std > 0), got {values!r}")
    if cfg.head.anchor_scale <= 0:
        raise ConfigError(f"{where}: head.anchor_scale must be > 0 (anchor side in strides), got {cfg.head.anchor_scale}")
    stages = cfg.backbone.dcn_stages
    if any(type(s) is not int or s not in DCN_STAGES for s in stages) or len(set(stages)) != len(stages):
        raise ConfigError(
            f"{where}: backbone.dcn_stages must list distinct stages among {list(DCN_STAGES)} "
            f"(c3-c5, torchvision layer2-layer4), got {stages!r}; [] for no DCN"
        )
    if cfg.head.channels != cfg.fpn.channels:
        raise ConfigError(f"{where}: head.channels ({cfg.head.channels}) must equal fpn.channels ({cfg.fpn.channels})")
    return cfg


def _check_assigner(value: Any, where: str) -> dict:
    """The YAML's `assigner:` (a name, or a mapping with 'name' and knobs) -> {'name': ..., **knobs},
    each knob checked against the field of the assigner's knobs dataclass (otadet/knobs.py)."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'assigner' must be a name or a mapping with 'name' and knobs, got {value!r}")
    value = dict(value)
    name = value.get("name", "ota")
    if name not in ASSIGNER_KNOBS:
        check_keys({name: 0}, ASSIGNER_KNOBS, f"{where}: assigner.name")
    params = {f.name: f.type for f in dataclasses.fields(ASSIGNER_KNOBS[name])}
    knobs = {k: v for k, v in value.items() if k != "name"}
    check_keys(knobs, params, f"{where}: assigner ({name})")
    for key, v in knobs.items():
        if params[key] is tuple:  # a sequence of numbers, e.g. fcos scale_ranges; YAML gives a list
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ConfigError(f"{where}: 'assigner.{key}' must be a list of numbers, got {v!r}")
            knobs[key] = tuple(float(x) for x in v)
        else:
            knobs[key] = _check_type(v, params[key], f"assigner.{key}", where)
    try:  # the dataclass's own checks (ranges), once, when the YAML loads
        ASSIGNER_KNOBS[name](**knobs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return {"name": name, **knobs}


def with_assigner(cfg: ModelConfig, name: str | None) -> ModelConfig:
    """`cfg` with its assigner swapped for `name` (the `assigner=` run key) at that assigner's own
    default knobs; None or the YAML's own name keeps the YAML's assigner and knobs."""
    if name is None or name == cfg.assigner["name"]:
        return cfg
    return dataclasses.replace(cfg, assigner=_check_assigner({"name": name}, f"assigner={name}"))


def load_model_config(name_or_path: str | os.PathLike) -> ModelConfig:
    """Read a model YAML given as a path or as a name shipped in cfg/ (e.g. 'ota_r50.yaml')."""
    path = find_asset(name_or_path, "cfg")
    if path is None:
        shipped = sorted(p.name for p in asset_dir("cfg").glob("ota_*.yaml"))
        raise FileNotFoundError(
            f"model YAML '{name_or_path}' not found (looked at {Path(name_or_path).resolve()} and "
            f"{asset_dir('cfg')}); shipped models: {', '.join(shipped)}"
        )
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return model_config_from_dict(data, where=str(path))


# ----------------------------------------------------------------------------- run arguments

# Keys whose default (often None) does not show every type they take.
_EXTRA_TYPES: dict[str, tuple[type, ...]] = {
    "imgsz": (int, list),  # one size, or a list for multi-scale training
    "device": (str, int),  # 'cpu', 0, '0', 'cuda:0'
    "source": (object,),  # path, glob, folder, array or a list of them: checked by the predictor
    "conf": (float,),
    "workers": (int,),
    "assigner": (str,),  # ota | fcos | atss | simota (assign mode: also all); null = the model YAML's
    "level": (str, int),  # assign: best | all | a stride | P3..P7
    "schedule": (str,),  # a key of SCHEDULES
    "resume": (bool, str),  # true (model= is the checkpoint), or a run folder / checkpoint path
    "save_json": (bool,),  # null = per mode: val writes its detections, predict does not
    "pretrained": (str, bool),  # a file, 'torchvision[:WEIGHTS]', true = 'torchvision', false = none
}

# Valid ranges of numeric run arguments, in interval notation (also the text of the error);
# a list value (imgsz, classes) is checked item by item.
_RANGES: dict[str, str] = {
    "imgsz": "[32, inf)", "max_size": "[32, inf)", "batch": "[1, inf)", "workers": "[0, inf)",
    "epochs": "[1, inf)", "lr0": "[0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)",
    "warmup_iters": "[0, inf)", "warmup_factor": "(0, 1]", "lr_steps": "(0, 1)", "lr_gamma": "(0, 1]",
    "grad_clip": "[0, inf)", "save_period": "[0, inf)", "conf": "[0, 1]", "iou": "[0, 1]", "max_det": "[1, inf)",
    "pre_nms_topk": "[1, inf)", "line_width": "[1, inf)", "opset": "[7, inf)", "iters": "[0, inf)",
    "ema_decay": "[0, 1)", "ema_tau": "(0, inf)", "classes": "[0, inf)", "max_pixels": "[1, inf)",
}  # fmt: skip


# Run arguments that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("train", "val"), "optimizer": ("sgd", "adamw"),  # format: checked by Detector.export, which names the formats
}  # fmt: skip


def _in_range(value: float, interval: str) -> bool:
    """Whether `value` lies in `interval`, e.g. '[0, 1)' or '(0, inf)'."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _check_range(key: str, value: Any, where: str) -> None:
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{where}: {key}={value!r} is not one of {', '.join(_CHOICES[key])}")
    interval = _RANGES.get(key)
    if interval is None:
        return
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{where}: {key}={value!r} must be a number or a list of numbers in {interval}")
    if (key == "imgsz" and not items) or any(not _in_range(v, interval) for v in items):
        raise ConfigError(f"{where}: {key}={value!r} is out of range: {key} must be in {interval}")


# The paper's schedules (`schedule=` key). Each fills the keys below at the layer that names it,
# so keys given in the same or a later layer win (make_args). lr0 is for batch 16 and is scaled
# linearly with `batch`; iteration counts are not.
_PAPER_OPTIM = {"optimizer": "sgd", "lr0": 0.01, "momentum": 0.9, "weight_decay": 0.0001, "warmup_iters": 1000, "warmup_factor": 0.001}
SCHEDULES: dict[str, dict] = {
    # COCO 1x: 90k iterations at batch 16, x0.1 at 60k and 80k, shorter side 800 / max 1333.
    "1x": {**_PAPER_OPTIM, "iters": 90000, "lr_steps": [2 / 3, 8 / 9], "imgsz": 800, "max_size": 1333},
    # COCO 2x: 180k iterations, x0.1 at 120k and 160k, multi-scale shorter side 640-800 (step 32).
    "2x": {**_PAPER_OPTIM, "iters": 180000, "lr_steps": [2 / 3, 8 / 9], "imgsz": [640, 672, 704, 736, 768, 800], "max_size": 1333},
    # CrowdHuman: 30 epochs; our choice of decay at epochs 24 and 27; 800 / max 1400 for its wide images.
    "crowdhuman": {**_PAPER_OPTIM, "iters": 0, "epochs": 30, "lr_steps": [0.8, 0.9], "imgsz": 800, "max_size": 1400},
}


# `conf: null` in cfg/default.yaml means this per-mode score threshold.
DEFAULT_CONF = {"val": 0.001, "predict": 0.4}  # predict: sqrt(cls*iou) >= 0.4, i.e. cls*iou >= 0.16


def mode_conf(conf: float | None, mode: str) -> float:
    """The score threshold of a run: `conf`, or where null the default of `mode` (DEFAULT_CONF:
    'val' for validation, the trainer's included; 'predict' for predict and an exported NMS)."""
    return DEFAULT_CONF[mode] if conf is None else conf


def eval_size(imgsz: int | list[int] | tuple[int, ...]) -> int:
    """The one shorter side of evaluation, prediction and export: `imgsz`, or the largest of a
    multi-scale training list."""
    return imgsz if isinstance(imgsz, int) else max(imgsz)


def default_args() -> dict:
    """Every run argument and its default, from cfg/default.yaml."""
    return read_yaml(asset_dir("cfg") / "default.yaml")


def _check_run_args(given: dict, where: str) -> dict:
    defaults = default_args()
    check_keys(given, defaults, where)
    out = {}
    for key, value in given.items():
        default = defaults[key]
        allowed = _EXTRA_TYPES.get(key) or ((type(default),) if default is not None else None)
        if value is None or allowed is None:
            out[key] = value
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"{where}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
        _check_range(key, value, where)
        out[key] = value
    return out


def make_args(overrides: dict, *, model_defaults: dict | None = None, where: str = "arguments") -> "Args":
    """Resolve run arguments. Precedence: {**default.yaml, **model YAML 'train:', **overrides};
    a `schedule` preset sits just below the layer that names it."""
    resolved: dict = {}
    for layer, name in ((default_args(), "cfg/default.yaml"), (model_defaults or {}, "model YAML train:"), (_check_run_args(overrides, where), where)):
        schedule = layer.get("schedule")
        if schedule is not None and schedule not in SCHEDULES:
            check_keys({schedule: 0}, SCHEDULES, f"{name}: schedule")
        resolved |= SCHEDULES.get(schedule, {}) | layer
    return Args(**resolved)


class Args:
    """Resolved run arguments: attribute access, immutable, with every key of cfg/default.yaml."""

    def __init__(self, **values):
        object.__setattr__(self, "__dict__", dict(values))

    def __setattr__(self, key, value):
        raise AttributeError("Args are immutable; use args.replace(key=value)")

    def __getattr__(self, key):
        close = difflib.get_close_matches(key, list(self.__dict__), n=3)
        raise AttributeError(f"no argument '{key}'" + (f" — did you mean {close}?" if close else ""))

    def replace(self, **changes) -> "Args":
        return Args(**{**self.__dict__, **changes})

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return "Args(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"
