"""Detector: the user-facing object. Detector('ota_r50.yaml').train(...), .val(), .predict(), .export().

It holds a network, its ModelConfig and class names, and resolves run arguments with the
precedence {**cfg/default.yaml, **model YAML 'train:', **checkpoint's train args, **kwargs}.
An exported file (.onnx, .torchscript) loads as an `ExportedModel` that predicts and
validates through the same code; its names, imgsz and max_size come from its metadata.
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
from .backend import EXPORTED_SUFFIXES, ExportedModel
from ..utils.log import LOGGER
from ..utils.paths import increment_path, newest_weights
from ..utils.torch_utils import model_summary, select_device

__all__ = ["Detector"]

# Run arguments a trained checkpoint passes on to val/predict/export unless overridden.
_INHERITED = ("data", "imgsz", "max_size")


class Detector:
    """An OTA detector built from a model YAML or loaded from an otadet checkpoint (.pt).

    Args:
        model: a YAML in cfg/ (e.g. 'ota_r50.yaml') or a path; a checkpoint path; an exported
            .onnx / .torchscript file (predict and val only); or None for the newest
            runs/train/*/weights/best.pt.
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
        elif suffix in EXPORTED_SUFFIXES:
            self.net = ExportedModel(model)
            self.cfg = None
            self.names = self.net.names
            meta = self.net.metadata
            size = self.net.imgsz if self.net.dynamic else self.net.static_size
            self.train_args = {"imgsz": size, "max_size": meta.get("max_size", 1333) if self.net.dynamic else size}
            if verbose:
                LOGGER.info(f"loaded {self.net.format} {model}: {meta.get('model', '?')}, {len(self.names)} classes, imgsz {size}")
            return
        else:
            self.cfg = load_model_config(model)
            self.names = [f"class{i}" for i in range(self.cfg.num_classes)]
            self.net = build_detector(self.cfg)
        if verbose:
            model_summary(self.net, _square(self._args({}).imgsz), self.cfg.name)

    # ------------------------------------------------------------------ helpers
    def _args(self, overrides: dict, mode: str = "") -> Args:
        """Precedence: cfg/default.yaml < model YAML train: < checkpoint's train args < overrides."""
        from ..datasets.image_io import set_max_pixels

        model_defaults = {**(self.cfg.train if self.cfg is not None else {}), **self.train_args}
        args = make_args(overrides, model_defaults=model_defaults, where=f"{mode} arguments")
        set_max_pixels(args.max_pixels)  # read by every image read of this process and its forked workers
        return args

    def _pytorch_only(self, mode: str) -> None:
        if isinstance(self.net, ExportedModel):
            raise ValueError(
                f"{mode} needs the PyTorch model, but {self.source} is an exported {self.net.format} file (predict and "
                f"val only): use the .pt checkpoint it came from, e.g. Detector('best.pt').{mode}(...)"
            )

    def _device(self, args: Args) -> torch.device:
        device = select_device(args.device)
        if isinstance(self.net, ExportedModel):
            self.net.to(device)
        else:  # channels_last: ~1.3x faster convolutions on the CPU (oneDNN) and on tensor cores
            self.net.to(device, memory_format=torch.channels_last)
        return device

    def __repr__(self) -> str:
        return f"Detector({self.source!r}, classes={len(self.names)})"

    # ------------------------------------------------------------------ modes
    def train(self, **kwargs) -> dict:
        """Train on `data`; afterwards this Detector holds the best weights. Returns the final metrics."""
        from .resume import resume_overrides
        from .trainer import run_training

        self._pytorch_only("train")
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
        save_json = True if args.save_json is None else args.save_json  # val writes its detections by default
        metrics = validate(
            self.net, loader, conf=DEFAULT_CONF["val"] if args.conf is None else args.conf, iou=args.iou, max_det=args.max_det,
            pre_nms_topk=args.pre_nms_topk, device=device, names=self.names,
            save_json=save_dir / ("detections.odgt" if spec.format == "crowdhuman" else "detections.json") if save_json else None,
            verbose=args.verbose, augment=args.augment,
        )  # fmt: skip
        metrics["save_dir"] = str(save_dir)
        (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        LOGGER.info(f"metrics saved to {save_dir / 'metrics.json'}")
        return metrics

    def predict(self, source=None, **kwargs):
        """Detections for images, videos, a webcam, arrays or PIL images (see engine/sources.py).

        Returns list[Results], or with stream=True a generator of Results (one per image or
        video frame, memory flat over a long video).
        """
        from .predictor import iter_predict

        if source is not None:
            kwargs["source"] = source
        args = self._args(kwargs, "predict")
        if args.source is None:
            raise ValueError(
                "predict needs a source: an image or video file, folder, glob, .txt list, webcam index, numpy array, "
                "PIL image or a list of them"
            )
        device = self._device(args)
        conf = DEFAULT_CONF["predict"] if args.conf is None else args.conf
        self._check_baked_nms(conf, args.iou, args.max_det)
        save_dir = None
        save_json = bool(args.save_json)  # predict writes predictions.json only when asked
        if args.save or args.save_txt or save_json:
            save_dir = increment_path(Path(args.project) / "predict" / args.name, exist_ok=args.exist_ok)
        results = iter_predict(
            self.net, args.source, imgsz=_square(args.imgsz), max_size=args.max_size, conf=conf, iou=args.iou,
            max_det=args.max_det, pre_nms_topk=args.pre_nms_topk, classes=args.classes, device=device,
            names=self.names, half=args.half, save=args.save, save_txt=args.save_txt, save_conf=args.save_conf,
            save_json=save_json, save_dir=save_dir, line_width=args.line_width, augment=args.augment,
        )  # fmt: skip
        return results if args.stream else list(results)

    def _check_baked_nms(self, conf: float, iou: float, max_det: int) -> None:
        """Warn where an embedded NMS already applied looser settings than asked (they cannot be undone)."""
        baked = getattr(self.net, "nms", None)
        if baked is None:
            return
        if conf < baked.conf or iou > baked.iou or max_det > baked.max_det:
            LOGGER.warning(
                f"WARNING: {self.source} has NMS inside (conf {baked.conf}, iou {baked.iou}, max_det {baked.max_det}); "
                f"conf {conf}, iou {iou}, max_det {max_det} cannot go below/above those: export again with nms=True "
                "and the settings you want, or export without nms"
            )

    def export(self, **kwargs) -> Path:
        """Export the assigner-free inference graph (format=onnx | torchscript); returns the written file.

        nms=True embeds NMS with this call's conf (default: predict's), iou and max_det.
        """
        from .exporter import FORMATS, NMSSettings, export_onnx, export_torchscript

        self._pytorch_only("export")
        args = self._args(kwargs, "export")
        if args.format not in FORMATS:
            raise ValueError(f"export format={args.format!r} is not supported; use format=onnx or format=torchscript")
        if args.simplify and args.format != "onnx":
            raise ValueError("export simplify=True applies to format=onnx only")
        # FP16 needs a GPU; the FP32 export traces on the CPU whatever device= says.
        device = select_device(args.device) if args.half else torch.device("cpu")
        if args.half and device.type != "cuda":
            raise ValueError(
                "export half=True needs a CUDA device (FP16 convolutions are not implemented on the CPU): "
                "pass device=0, or export in FP32 with half=False"
            )
        suffix = FORMATS[args.format]
        if self.source.endswith((".pt", ".pth")):
            file = Path(self.source).with_suffix(suffix)
        else:
            file = increment_path(Path(args.project) / "export" / args.name, exist_ok=args.exist_ok) / f"{self.cfg.name}{suffix}"
            file.parent.mkdir(parents=True, exist_ok=True)
        imgsz = _square(args.imgsz)
        nms = None
        if args.nms:
            conf = DEFAULT_CONF["predict"] if args.conf is None else args.conf
            nms = NMSSettings(conf=conf, iou=args.iou, max_det=args.max_det, pre_nms_topk=args.pre_nms_topk)
        metadata = {
            "names": self.names,
            "strides": list(self.net.strides),
            "imgsz": imgsz,
            "max_size": args.max_size,
            "stride_multiple": 32,
            "model": self.cfg.name,
            "otadet_version": __version__,
            "date": datetime.now().isoformat(timespec="seconds"),
        }
        common = dict(file=file, imgsz=imgsz, dynamic=args.dynamic, nms=nms, half=args.half, metadata=metadata)
        self.net.to(device)
        if args.half:
            self.net.half()
        try:
            if args.format == "torchscript":
                return export_torchscript(self.net, **common)
            return export_onnx(self.net, opset=args.opset, simplify=args.simplify, **common)
        finally:
            self.net.float()

    def _check_names(self, data_names: list[str], data: str) -> None:
        if len(data_names) != len(self.names):
            raise ValueError(
                f"the model has {len(self.names)} classes but {data} has {len(data_names)}: "
                "train on this data first (Detector(...).train(data=...)) or pass the matching model="
            )


def _square(imgsz: int | list[int]) -> int:
    return imgsz if isinstance(imgsz, int) else max(imgsz)
