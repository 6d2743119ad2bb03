"""The `otadet` command: a thin layer over Detector's methods (Ultralytics' style).

    otadet MODE key=value ...      MODE: train | val | predict | export | convert | assign | cfg | help | version

Values are parsed as YAML scalars/lists (epochs=3 -> int, lr0=1e-4 -> float, val=false -> bool,
imgsz=[640,800] -> list) and checked against cfg/default.yaml, whose defaults give every key's type.

Every failure ends as one `otadet: error: ...` line (exit 2 for a wrong argument or file, 1 for
a run that failed); OTADET_DEBUG=1 or an explicit verbose=true argument shows the traceback.
"""

import os
import sys
import traceback
from pathlib import Path

import yaml

from .utils.checks import load_yaml

__all__ = ["main", "parse_overrides"]

MODES = ("train", "val", "predict", "export", "assign")

HELP = """\
otadet — train, validate, run and export OTA object detectors.

Usage:  otadet MODE key=value ...

  otadet train   model=ota_tiny.yaml data=shapes.yaml epochs=8
  otadet val     model=runs/train/exp/weights/best.pt data=shapes.yaml
  otadet predict model=runs/train/exp/weights/best.pt source=images/
  otadet export  model=runs/train/exp/weights/best.pt format=onnx       # or format=torchscript | openvino, nms=true
  otadet predict model=runs/train/exp/weights/best.onnx source=video.mp4
  otadet convert source=torchvision:fcos_resnet50_fpn                  # or source=ota_r50_1x.pth -> weights/*.pt
  otadet assign  model=runs/train/exp/weights/best.pt assigner=all   # paper Fig. 3: positives per gt, first val image
  otadet assign  source=image.jpg labels=image.txt assigner=ota level=all
  otadet cfg     # every key with its default (cfg/default.yaml)
  otadet version

Without model=, val/predict/export use the newest runs/train/*/weights/best.pt and train uses
ota_tiny.yaml. Models: {models}. Datasets: {datasets}.
"""


class UsageError(ValueError):
    pass


def parse_overrides(tokens: list[str]) -> dict:
    """['epochs=3', 'imgsz=[640,800]'] -> {'epochs': 3, 'imgsz': [640, 800]}."""
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise UsageError(f"argument '{token}' is not key=value (e.g. epochs=3); see `otadet help`")
        key = key.strip().lstrip("-").replace("-", "_")
        try:
            parsed = load_yaml(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        # A bare comma list like device=0,1 stays a string; YAML turns other things into str anyway.
        out[key] = parsed
    return out


def _help() -> str:
    from .utils.paths import asset_dir

    models = ", ".join(sorted(p.name for p in asset_dir("cfg").glob("ota_*.yaml")))
    datasets = ", ".join(sorted(p.name for p in asset_dir("data").glob("*.yaml")))
    return HELP.format(models=models, datasets=datasets)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(_help())
        return 0
    mode, rest = argv[0], argv[1:]
    if mode in ("version", "--version", "cfg") and rest:
        raise UsageError(f"otadet {mode} takes no arguments (got {' '.join(rest)})")
    if mode in ("version", "--version"):
        from . import __version__

        print(__version__)
        return 0
    if mode == "cfg":
        from .utils.paths import asset_dir

        print((asset_dir("cfg") / "default.yaml").read_text())
        return 0
    if mode == "convert":
        return _convert(parse_overrides(rest))
    if mode not in MODES:
        import difflib

        close = difflib.get_close_matches(mode, [*MODES, "cfg", "help", "version"], n=1)
        hint = f" — did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown mode '{mode}'{hint}; modes: {', '.join(MODES)}, cfg, help, version")

    from .engine.model import Detector

    overrides = parse_overrides(rest)
    model = overrides.pop("model", None)
    if model is None:
        model = _default_model(mode, overrides)
    if mode in ("predict", "assign"):
        overrides.setdefault("save", True)  # the CLI writes annotated images by default
    detector = Detector(model, verbose=mode == "train")
    if mode == "train":
        detector.train(**overrides)
    elif mode == "val":
        detector.val(**overrides)
    elif mode == "predict":
        # Always streamed: one frame in memory at a time, whatever the source's length.
        for _ in detector.predict(**{**overrides, "stream": True}):
            pass
    elif mode == "assign":
        detector.assign(**overrides)
    else:
        path = detector.export(**overrides)
        print(path)
    return 0


def _default_model(mode: str, overrides: dict):
    """The model when none is given: train resume=<run> that run's last.pt (resume=True then continues
    it), train ota_tiny.yaml, assign the newest trained weights or an untrained ota_tiny (said on the
    picture); val/predict/export None, the Detector's newest runs/train/*/weights/best.pt."""
    if mode == "train" and isinstance(overrides.get("resume"), str):
        from .engine.resume import resume_checkpoint

        model = str(resume_checkpoint(overrides["resume"]))  # resume=runs/train/exp: that run's last.pt, found here once
        overrides["resume"] = True  # the Detector loaded from it continues it
        return model
    if mode == "train":
        print("otadet train: no model= given, using ota_tiny.yaml", file=sys.stderr)
        return "ota_tiny.yaml"
    if mode == "assign":
        from .utils.paths import newest_weights

        model = newest_weights() or "ota_tiny.yaml"
        if model == "ota_tiny.yaml":
            print("otadet assign: no model= and no trained runs/train/*/weights/best.pt: costs from an untrained ota_tiny.yaml", file=sys.stderr)
        return model
    return None


def _convert(overrides: dict) -> int:
    """otadet convert source=torchvision:fcos_resnet50_fpn|FILE.pth [weights=FILE] [out=FILE.pt] [allow_pickle=true]."""
    from .convert import convert, save_converted
    from .utils.checks import check_keys

    check_keys(overrides, ("source", "weights", "out", "allow_pickle"), "otadet convert")
    source = overrides.get("source")
    if not source:
        raise UsageError("otadet convert needs source=torchvision:fcos_resnet50_fpn or source=path/to/ota_r50_1x.pth")
    checkpoint = convert(str(source), weights=overrides.get("weights"), allow_pickle=bool(overrides.get("allow_pickle")))
    stem = str(source).partition(":")[2] if str(source).startswith("torchvision:") else Path(str(source)).stem
    out = save_converted(checkpoint, overrides.get("out") or Path("weights") / f"{stem}.pt")
    print(out)
    return 0


def _debug(argv: list[str]) -> bool:
    """Tracebacks on request: OTADET_DEBUG=1, or verbose=true given explicitly (its default is true)."""
    explicit = any(a.partition("=")[0].strip("-") == "verbose" and a.partition("=")[2].lower() in ("true", "1", "yes") for a in argv)
    return os.environ.get("OTADET_DEBUG", "") not in ("", "0") or explicit


def _one_line(e: BaseException) -> str:
    """A failure other than a wrong argument, with its type (KeyError: 99, OSError: ...), where
    the message alone says too little; multi-line messages (a DataLoader worker's) keep their last line."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1].strip() if lines else repr(e)}"


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("otadet: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure a user can cause: one line, the traceback only on request
        if _debug(argv):
            traceback.print_exc()
        usage = isinstance(e, (UsageError, ConfigError, FileNotFoundError, ValueError))
        text = str(e) if usage else _one_line(e)
        hint = "" if usage or _debug(argv) else " (OTADET_DEBUG=1 shows the traceback)"
        print(f"otadet: error: {text}{hint}", file=sys.stderr)
        return 2 if usage else 1
