"""Detector: the user-facing object. Detector('ota_r50.yaml').train(...), .val(), .predict(), .export().

It holds a network, its ModelConfig and class names, and resolves run arguments with the
precedence {**cfg/default.yaml, **model YAML 'train:', **checkpoint's train args, **kwargs}.
"""

import json
from datetime import datetime
from pathlib import Path

import torch

from .. import __version__
from ..config import DEFAULT_CONF, Args, load_model_config, make_args, model_config_from_dict
from ..datasets.data_yaml import load_data
from ..datasets.loader import build_dataloader
from ..models.build import build_detector
from ..utils.checkpoint import load_checkpoint
from ..utils.log import LOGGER
from ..utils.paths import increment_path, newest_weights
from ..utils.torch_utils import model_summary, select_device

__all__ = ["Detector"]

# Run arguments a trained checkpoint passes on to val/predict/export unless overridden.
_INHERITED = ("data", "imgsz", "max_size")


class Detector:
    """An OTA detector built from a model YAML or loaded from an otadet checkpoint (.pt).

    Args:
        model: a YAML in cfg/ (e.g. 'ota_r50.yaml') or a path; a checkpoint path; or None for
            the newest runs/train/*/weights/best.pt.
        verbose: print the model summary (layers, parameters, GFLOPs).
    """

    def __init__(self, model: str | Path | None = "ota_tiny.yaml", *, verbose: bool = True):
        if model is None:
            model = newest_weights()
            if model is None:
                raise FileNotFoundError(
                    "no model given and no runs/train/*/weights/best.pt found: train one with "
                    "`otadet train model=ota_tiny.yaml` or pass model=path/to/best.pt"
                )
            LOGGER.info(f"using the newest trained weights {model}")
        self.source = str(model)
        self.train_args: dict = {}
        suffix = Path(str(model)).suffix.lower()
        if suffix in (".pt", ".pth"):
            state = load_checkpoint(model)
            self.cfg = model_config_from_dict(state["model_cfg"], where=f"{model}: model_cfg")
            self.names = list(state["names"])
            self.net = build_detector(self.cfg, len(self.names), pretrained=False)  # weights from the checkpoint
            self.net.load_state_dict(state["model"])
            self.train_args = {k: v for k, v in state.get("train_args", {}).items() if k in _INHERITED}
        elif suffix == ".onnx":
            raise ValueError(f"{model}: running exported ONNX models is not supported yet; load the .pt checkpoint")
        else:
            self.cfg = load_model_config(model)
            self.names = [f"class{i}" for i in range(self.cfg.num_classes)]
            self.net = build_detector(self.cfg)
        if verbose:
            model_summary(self.net, _square(self._args({}).imgsz), self.cfg.name)

    # ------------------------------------------------------------------ helpers
    def _args(self, overrides: dict, mode: str = "") -> Args:
        """Precedence: cfg/default.yaml < model YAML train: < checkpoint's train args < overrides."""
        return make_args(overrides, model_defaults={**self.cfg.train, **self.train_args}, where=f"{mode} arguments")

    def _device(self, args: Args) -> torch.device:
        device = select_device(args.device)
        self.net.to(device)
        return device

    def __repr__(self) -> str:
        return f"Detector({self.source!r}, classes={len(self.names)})"

    # ------------------------------------------------------------------ modes
    def train(self, **kwargs) -> dict:
        """Train on `data`; afterwards this Detector holds the best weights. Returns the final metrics."""
        from .resume import resume_overrides
        from .trainer import run_training

        if kwargs.get("resume"):  # continue a run: its checkpoint's train args, then the ones given here
            kwargs = resume_overrides(kwargs, self.source)
        args = self._args(kwargs, "train")
        same_classes = len(self.names) == len(load_data(args.data).names)
        init = self.net.state_dict() if self.train_args and same_classes else None  # fine-tune a checkpoint
        result = run_training(self.cfg, args, init_state=init)
        state = load_checkpoint(result["best"])
        self.names = list(state["names"])
        self.cfg = model_config_from_dict(state["model_cfg"], where=f"{result['best']}: model_cfg")
        self.net = build_detector(self.cfg, len(self.names), pretrained=False)
        self.net.load_state_dict(state["model"])
        self.train_args = {k: v for k, v in args.to_dict().items() if k in _INHERITED}
        self.source = str(result["best"])
        return result["metrics"]

    def val(self, **kwargs) -> dict:
        """Benchmark metrics on the `split` of `data`: COCOeval (COCO, YOLO) or MR⁻²/AP/recall (CrowdHuman)."""
        from .validator import validate

        args = self._args(kwargs, "val")
        device = self._device(args)
        spec = load_data(args.data)
        self._check_names(spec.names, args.data)
        loader = build_dataloader(
            spec, args.split, imgsz=_square(args.imgsz), max_size=args.max_size, batch=args.batch,
            workers=args.workers, shuffle=False, seed=args.seed,
        )  # fmt: skip
        save_dir = increment_path(Path(args.project) / "val" / args.name, exist_ok=args.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        metrics = validate(
            self.net, loader, conf=DEFAULT_CONF["val"] if args.conf is None else args.conf, iou=args.iou, max_det=args.max_det,
            pre_nms_topk=args.pre_nms_topk, device=device, names=self.names,
            save_json=save_dir / ("detections.odgt" if spec.format == "crowdhuman" else "detections.json") if args.save_json else None,
            verbose=args.verbose,
            augment=args.augment,
        )  # fmt: skip
        metrics["save_dir"] = str(save_dir)
        (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        LOGGER.info(f"metrics saved to {save_dir / 'metrics.json'}")
        return metrics

    def predict(self, source=None, **kwargs) -> list:
        """Detections for an image file, folder, glob, BGR array or a list of them -> list[Results]."""
        from .predictor import predict

        if source is not None:
            kwargs["source"] = source
        args = self._args(kwargs, "predict")
        if args.source is None:
            raise ValueError("predict needs a source: an image file, folder, glob, numpy array or list of them")
        device = self._device(args)
        save_dir = None
        if args.save:
            save_dir = increment_path(Path(args.project) / "predict" / args.name, exist_ok=args.exist_ok)
        return predict(
            self.net, args.source, imgsz=_square(args.imgsz), max_size=args.max_size,
            conf=DEFAULT_CONF["predict"] if args.conf is None else args.conf, iou=args.iou, max_det=args.max_det,
            pre_nms_topk=args.pre_nms_topk, device=device, names=self.names, save=args.save,
            save_dir=save_dir, line_width=args.line_width, augment=args.augment,
        )  # fmt: skip

    def export(self, **kwargs) -> Path:
        """Export the assigner-free inference graph; returns the written file."""
        from .exporter import export_onnx

        args = self._args(kwargs, "export")
        if args.format != "onnx":
            raise ValueError(f"export format={args.format!r} is not supported; use format=onnx")
        self.net.to("cpu")
        if self.source.endswith((".pt", ".pth")):
            file = Path(self.source).with_suffix(".onnx")
        else:
            file = increment_path(Path(args.project) / "export" / args.name, exist_ok=args.exist_ok) / f"{self.cfg.name}.onnx"
            file.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "names": self.names,
            "strides": list(self.net.strides),
            "imgsz": _square(args.imgsz),
            "stride_multiple": 32,
            "model": self.cfg.name,
            "otadet_version": __version__,
            "date": datetime.now().isoformat(timespec="seconds"),
        }
        return export_onnx(self.net, file=file, imgsz=_square(args.imgsz), opset=args.opset, dynamic=args.dynamic, metadata=metadata)

    def _check_names(self, data_names: list[str], data: str) -> None:
        if len(data_names) != len(self.names):
            raise ValueError(
                f"the model has {len(self.names)} classes but {data} has {len(data_names)}: "
                "train on this data first (Detector(...).train(data=...)) or pass the matching model="
            )


def _square(imgsz: int | list[int]) -> int:
    return imgsz if isinstance(imgsz, int) else max(imgsz)
