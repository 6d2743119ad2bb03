"""Publicly released COCO detectors as otadet checkpoints (docs/models.md).

    convert('torchvision:fcos_resnet50_fpn')   # torchvision's FCOS, from its local cache or weights=
    convert('ota_r50_1x.pth')                   # the OTA authors' cvpods checkpoint

returns an otadet checkpoint dict (model_cfg, names, model, train_args) that `Detector` loads
and `save_converted` writes. Nothing is downloaded: a missing file fails naming the file, its
URL and the folder to put it in. Files load with weights_only=True; one that needs pickle fails
saying so, and loads only with allow_pickle=True.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import load_model_config
from ..models.build import build_detector
from ..utils.checkpoint import save_checkpoint
from . import cvpods_ota, torchvision_fcos

__all__ = ["convert", "save_converted", "is_conversion_source", "read_weights"]

_TORCHVISION = "torchvision:"


def is_conversion_source(source) -> bool:
    """True for 'torchvision:<model>' names, which only conversion understands."""
    return isinstance(source, str) and source.startswith(_TORCHVISION)


def convert(source: str | os.PathLike, *, weights: str | os.PathLike | None = None, allow_pickle: bool = False) -> dict:
    """An otadet checkpoint dict for `source`: 'torchvision:fcos_resnet50_fpn' (file from
    torchvision's cache, or `weights`) or a path to the official OTA (cvpods) checkpoint."""
    if is_conversion_source(source):
        name = str(source)[len(_TORCHVISION):]
        if name not in torchvision_fcos.WEIGHTS:
            raise ValueError(f"source={source}: otadet converts {', '.join(_TORCHVISION + n for n in torchvision_fcos.WEIGHTS)}")
        tv_weights = torchvision_fcos.WEIGHTS[name]
        path = Path(weights).expanduser() if weights is not None else _torchvision_file(tv_weights.url)
        state = read_weights(path, allow_pickle=allow_pickle, url=tv_weights.url)
        model, names = torchvision_fcos.convert_state(state, list(tv_weights.meta["categories"]), str(path))
        return _checkpoint(torchvision_fcos.MODEL_YAML, model, names, source=f"{source} ({path.name})")
    path = Path(weights or source).expanduser()
    state = read_weights(path, allow_pickle=allow_pickle)
    if any(k.startswith(cvpods_ota.BACKBONE_PREFIX) for k in state):
        model, names = cvpods_ota.convert_state(state, str(path))
        return _checkpoint(cvpods_ota.MODEL_YAML, model, names, source=str(path))
    if any(k.startswith("head.classification_head.") for k in state):
        raise ValueError(f"{path} looks like torchvision's FCOS: convert it with source=torchvision:fcos_resnet50_fpn weights={path}")
    raise ValueError(
        f"{path}: unknown key layout (e.g. {list(state)[:3]}); otadet converts torchvision's fcos_resnet50_fpn "
        "(source=torchvision:fcos_resnet50_fpn) and the official OTA cvpods checkpoint (backbone.bottom_up.*)"
    )


def save_converted(checkpoint: dict, out: str | os.PathLike) -> Path:
    """Write a converted checkpoint atomically; returns the path."""
    return save_checkpoint(checkpoint, out)


def read_weights(path: Path, *, allow_pickle: bool = False, url: str | None = None) -> dict[str, Tensor]:
    """A state dict from a weights file (a bare state dict, or one under 'model' / 'state_dict')."""
    if not path.is_file():
        where = f" — download {url} and put it at {path} (the folder {path.parent})" if url else ""
        raise FileNotFoundError(f"weights file {path} does not exist{where}; otadet never downloads")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} does not load with weights_only=True (it needs Python pickle: {first}); unpickling can run code "
            f"from the file, so otadet does not do it by default — if you trust the file, pass allow_pickle=true"
        ) from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):  # detectron2-style files hold numpy arrays
            value = torch.from_numpy(value)
        if isinstance(value, Tensor):
            out[key] = value
    return out


def _torchvision_file(url: str) -> Path:
    """Where torchvision keeps (and would download) the file of `url`: torch.hub.get_dir()/checkpoints."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.name} is not in torchvision's cache and otadet never downloads: get {url} and put it in {folder} "
            "(torch.hub.get_dir()/checkpoints, set by $TORCH_HOME), or pass weights=path/to/the/file"
        )
    return path


def _checkpoint(model_yaml: str, model: dict[str, Tensor], names: list[str], *, source: str) -> dict:
    """The otadet checkpoint dict; the state is loaded strictly into the YAML's network first."""
    cfg = load_model_config(model_yaml)
    net = build_detector(cfg, len(names), pretrained=False)
    missing, unexpected = net.load_state_dict(model, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit {model_yaml} ({len(missing)} missing keys e.g. {missing[:3]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:3]})"
        )
    return {
        "model_cfg": cfg.to_dict(),
        "names": names,
        "model": net.state_dict(),
        "train_args": {"data": "coco.yaml", "imgsz": cfg.train.get("imgsz", 800), "max_size": cfg.train.get("max_size", 1333)},
        "converted_from": source,
    }
