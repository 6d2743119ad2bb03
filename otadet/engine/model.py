"""Detector: the user-facing object. Detector('ota_r50.yaml').train(...), .val(), .predict(), .export().

It holds a network, its ModelConfig and class names. Each mode first resolves its call once
(engine/resolve.py: run arguments with the precedence {**cfg/default.yaml, **model YAML 'train:',
**checkpoint's inherited args, **resumed run's args, **kwargs}, model config, names, data,
conf, image size, resumed checkpoint) and hands that Run on. An exported file (.onnx,
.torchscript, an OpenVINO _openvino_model/ folder) loads as an `ExportedModel` that predicts
and validates through the same code; its names, imgsz and max_size come from its metadata.
"""

import json
from pathlib import Path

import torch

from ..config import eval_size, load_model_config
from ..convert import convert, is_conversion_source
from ..datasets.loader import build_dataloader
from ..models.build import build_detector
from ..utils.checkpoint import load_checkpoint
from ..utils.log import LOGGER
from ..utils.paths import increment_path, newest_weights
from ..utils.torch_utils import model_summary, select_device
from .backend import ExportedModel, is_exported, load_exported
from .resolve import Run, inherited_args, resolve, run_args
from .transfer import detector_from_checkpoint

__all__ = ["Detector"]


class Detector:
    """An OTA detector built from a model YAML or loaded from an otadet checkpoint (.pt).

    Args:
        model: a YAML in cfg/ (e.g. 'ota_r50.yaml') or a path; a checkpoint path; an exported
            .onnx / .torchscript file or OpenVINO <name>_openvino_model/ folder (predict and val only); a released COCO detector to convert
            ('torchvision:fcos_resnet50_fpn', or the official OTA .pth with weights=; see
            otadet.convert); or None for the newest runs/train/*/weights/best.pt.
        weights: the weights file of a model to convert (default for torchvision: its local cache).
        verbose: print the model summary (layers, parameters, GFLOPs).
    """

    def __init__(self, model: str | Path | None = "ota_tiny.yaml", *, weights: str | Path | None = None, verbose: bool = True):
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
        self.trained = False  # trained weights (a checkpoint, a converted detector): train() fine-tunes them
        suffix = Path(str(model)).suffix.lower()
        state = None
        if is_conversion_source(model) or weights is not None:  # a released detector, converted in memory
            state = convert(model, weights=weights)
        elif suffix in (".pt", ".pth"):
            state = load_checkpoint(model)
        if state is not None:
            self.cfg, self.names, self.net = detector_from_checkpoint(state, str(model))
            self.train_args = inherited_args(state.get("train_args", {}))
            self.trained = True
        elif is_exported(model):
            self.net = load_exported(model)
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
            model_summary(self.net, eval_size(run_args(self, {}).imgsz), self.cfg.name)

    # ------------------------------------------------------------------ helpers
    def _pytorch_only(self, mode: str) -> None:
        if isinstance(self.net, ExportedModel):
            raise ValueError(
                f"{mode} needs the PyTorch model, but {self.source} is an exported {self.net.format} file (predict and "
                f"val only): use the .pt checkpoint it came from, e.g. Detector('best.pt').{mode}(...)"
            )

    def _device(self, run: Run) -> torch.device:
        device = select_device(run.args.device)
        if isinstance(self.net, ExportedModel):
            self.net.to(device)
        else:  # channels_last: ~1.3x faster convolutions on the CPU (oneDNN) and on tensor cores
            self.net.to(device, memory_format=torch.channels_last)
        return device

    def __repr__(self) -> str:
        return f"Detector({self.source!r}, classes={len(self.names)})"

    # ------------------------------------------------------------------ modes
    def train(self, **kwargs) -> dict:
        """Train on `data`; afterwards this Detector holds the best weights. Returns the final metrics.

        A trained detector fine-tunes its weights (engine/transfer.py); resume= continues a run."""
        from .trainer import run_training

        self._pytorch_only("train")
        run = resolve(self, "train", kwargs)
        result = run_training(run)
        best = result["best"]
        self.cfg, self.names, self.net = detector_from_checkpoint(load_checkpoint(best), str(best))
        self.train_args = inherited_args(run.args.to_dict())
        self.source = str(best)
        self.trained = True
        return result["metrics"]

    def val(self, **kwargs) -> dict:
        """Benchmark metrics on the `split` of `data`: COCOeval (COCO, YOLO) or MR⁻²/AP/recall (CrowdHuman)."""
        from .validator import validate

        run = resolve(self, "val", kwargs)
        args = run.args
        device = self._device(run)
        self._check_names(run.data.names, args.data)
        loader = build_dataloader(
            run.data, args.split, imgsz=run.imgsz, max_size=args.max_size, batch=args.batch,
            workers=args.workers, shuffle=False, seed=args.seed,
        )  # fmt: skip
        save_dir = increment_path(Path(args.project) / "val" / args.name, exist_ok=args.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        save_json = True if args.save_json is None else args.save_json  # val writes its detections by default
        detections = save_dir / ("detections.odgt" if run.data.format == "crowdhuman" else "detections.json")
        metrics = validate(
            self.net, loader, conf=run.conf, iou=args.iou, max_det=args.max_det, pre_nms_topk=args.pre_nms_topk,
            device=device, names=self.names, save_json=detections if save_json else None,
            verbose=args.verbose, augment=args.augment, half=args.half,
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
        run = resolve(self, "predict", kwargs)
        args = run.args
        if args.source is None:
            raise ValueError(
                "predict needs a source: an image or video file, folder, glob, .txt list, webcam index, numpy array, "
                "PIL image or a list of them"
            )
        device = self._device(run)
        self._check_baked_nms(run.conf, args.iou, args.max_det)
        save_dir = None
        save_json = bool(args.save_json)  # predict writes predictions.json only when asked
        if args.save or args.save_txt or save_json:
            save_dir = increment_path(Path(args.project) / "predict" / args.name, exist_ok=args.exist_ok)
        results = iter_predict(
            self.net, args.source, imgsz=run.imgsz, max_size=args.max_size, conf=run.conf, iou=args.iou,
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
        """Export the assigner-free inference graph (format=onnx | torchscript | openvino); returns the
        written file (openvino: the <stem>_openvino_model/ folder).

        nms=True embeds NMS with this call's conf (default: predict's), iou and max_det.
        """
        from .exporter import FORMATS, NMSSettings, check_export_args, check_half_device, export_onnx, export_torchscript
        from .openvino_ir import export_openvino

        self._pytorch_only("export")
        run = resolve(self, "export", kwargs)
        args = run.args
        check_export_args(args.format, half=args.half, int8=args.int8, nms=args.nms, simplify=args.simplify)
        # FP16 needs a GPU; the FP32 export traces on the CPU whatever device= says.
        device = select_device(args.device) if args.half else torch.device("cpu")
        if args.half:
            check_half_device(device)
        file = self._export_file(run, FORMATS[args.format])
        nms = NMSSettings(conf=run.conf, iou=args.iou, max_det=args.max_det, pre_nms_topk=args.pre_nms_topk) if args.nms else None
        # The exporter adds what it derives: strides, imgsz, stride_multiple, version, date, export_args, nms.
        metadata = {"names": self.names, "max_size": args.max_size, "model": self.cfg.name}
        common = dict(file=file, imgsz=run.imgsz, dynamic=args.dynamic, nms=nms, half=args.half, metadata=metadata)
        self.net.to(device)
        if args.half:
            self.net.half()
        try:
            if args.format == "torchscript":
                return export_torchscript(self.net, **common)
            if args.format == "openvino":
                file = export_openvino(self.net, folder=common.pop("file"), **common)
            else:
                file = export_onnx(self.net, opset=args.opset, simplify=args.simplify, **common)
            return self._quantize(file, run) if args.int8 else file
        finally:
            self.net.float()

    def _export_file(self, run: Run, suffix: str) -> Path:
        """best.pt -> best.onnx | best.torchscript | best_openvino_model/ beside it; a YAML model under runs/export/."""
        if self.source.endswith((".pt", ".pth")):
            return Path(self.source).with_name(Path(self.source).stem + suffix)
        args = run.args
        file = increment_path(Path(args.project) / "export" / args.name, exist_ok=args.exist_ok) / f"{self.cfg.name}{suffix}"
        file.parent.mkdir(parents=True, exist_ok=True)
        return file

    def _quantize(self, file: Path, run: Run) -> Path:
        """The int8 version next to the float32 `file`, calibrated on `args.data`: the QDQ file
        <name>_int8.onnx (engine/quantize.py), or the IR folder <stem>_int8_openvino_model (nncf, engine/openvino_ir.py)."""
        from .exporter import read_metadata
        from .openvino_ir import quantize_openvino
        from .quantize import calibration_batches, quantize_onnx, write_metadata

        args = run.args
        batches = calibration_batches(args.data, imgsz=run.imgsz, max_size=args.max_size)
        if args.format == "openvino":
            return quantize_openvino(file, batches, data=str(args.data))
        int8_file = file.with_name(f"{file.stem}_int8.onnx")
        info = quantize_onnx(file, int8_file, batches)
        metadata = read_metadata(file)
        metadata["export_args"] = {**metadata.get("export_args", {}), "int8": True, "data": str(args.data)}
        write_metadata(int8_file, {**metadata, "int8": info})
        LOGGER.info(f"int8: saved as {int8_file} ({int8_file.stat().st_size / 1e6:.1f} MB); float32 graph kept as {file}")
        return int8_file

    def _check_names(self, data_names: list[str], data: str) -> None:
        if len(data_names) != len(self.names):
            raise ValueError(
                f"the model has {len(self.names)} classes but {data} has {len(data_names)}: "
                "train on this data first (Detector(...).train(data=...)) or pass the matching model="
            )
        placeholder = self.names == [f"class{i}" for i in range(len(self.names))]  # a model YAML: no names yet
        differ = [(i, a, b) for i, (a, b) in enumerate(zip(self.names, data_names)) if str(a) != str(b)]
        if differ and not placeholder:
            shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in differ[:3]) + (", ..." if len(differ) > 3 else "")
            LOGGER.warning(
                f"WARNING: the model's class names differ from {data}'s at {len(differ)} of {len(data_names)} indices "
                f"({shown}); AP is computed by index, so check that they are the same classes in the same order"
            )

    def assign(self, source=None, **kwargs) -> list:
        """The paper's Figure 3 for one image: which anchors an assigner makes positive for each gt.

        Labels from `data` (its first `split` image without a source; an image id or file name),
        or labels= a YOLO .txt / COCO .json for source=; assigner= ota | fcos | atss | simota | all;
        level= best | all | a stride. Costs come from this model's predictions (an untrained model
        is rebuilt from `seed`, and the picture says so). save=True writes the picture under
        <project>/assign/<name>/. Returns list[Assignment] (engine/assign_vis.py), one per assigner.
        """
        from .assign_vis import visualise_assignment

        self._pytorch_only("assign")
        if source is not None:
            kwargs["source"] = source
        args = resolve(self, "assign", kwargs).args
        trained = Path(self.source).suffix.lower() in (".pt", ".pth")
        return visualise_assignment(self.net, self.cfg, self.names, args, weights=self.source, trained=trained)
