"""OpenVINO IR: the exported ONNX graph converted for OpenVINO, and the backend that runs it.

An export is a folder named as Ultralytics names it, `<stem>_openvino_model/`, holding
- `<stem>.xml` + `<stem>.bin`: the IR of the very graph export_onnx writes (openvino.convert_model
  on the .onnx, then save_model with compress_to_fp16=False: float32 weights);
- `metadata.yaml`: the otadet metadata, the keys an ONNX file carries (names, strides, imgsz,
  max_size, stride_multiple, model, otadet_version, date, export_args, nms), with
  export_args.format = openvino and export_args.openvino = the converter's version. A file
  beside the IR, as Ultralytics writes it, readable without OpenVINO.

Inference precision is chosen at run time, not baked into the file. OpenVINO's CPU plugin
defaults to bf16 on a CPU with bf16 arithmetic, so the hint is always set: INFERENCE_PRECISION_HINT
f32 for half=False, bf16 for half=True (error on a CPU without avx512_bf16/amx_bf16, where
OpenVINO would ignore the hint and run f32). Threads: INFERENCE_NUM_THREADS = `threads`.
The model compiles on first use, and again after a change of precision.

int8 (`export format=openvino int8=True data=...`): nncf's post-training quantisation of the
float32 IR (MinMax activation ranges on the same calibration images as the ONNX int8 path,
engine/quantize.py; int8 symmetric per-channel weights, 8-bit per-tensor activations, fast bias
correction), written to `<stem>_int8_openvino_model/` beside the float32 folder. As for ONNX,
the head's three prediction convolutions stay float32 (quantize.HEAD_LAYERS), found in the IR as
the convolutions nearest the output.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from ..utils.log import LOGGER, colorstr
from ..utils.torch_utils import cpu_bf16_supported
from .backend import ExportedModel
from .exporter import FORMATS, OPENVINO_KEEPS_FP32, NMSSettings, _log_done, export_onnx, read_metadata
from .quantize import HEAD_LAYERS

__all__ = ["METADATA_FILE", "OpenVINOModel", "export_openvino", "is_openvino", "quantize_openvino", "read_ir_metadata"]

SUFFIX = FORMATS["openvino"]  # _openvino_model
REEXPORT = "re-export it with `otadet export format=openvino`"
METADATA_FILE = "metadata.yaml"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # our name -> OpenVINO's INFERENCE_PRECISION_HINT


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ValueError("OpenVINO export and inference need the openvino package: pip install otadet[openvino]") from None
    return openvino


def is_openvino(model: str | os.PathLike) -> bool:
    """Whether `model` names an OpenVINO IR: an .xml, a name ending in _openvino_model, or a folder holding an .xml."""
    path = Path(model)
    return path.suffix.lower() == ".xml" or path.name.endswith(SUFFIX) or (path.is_dir() and any(path.glob("*.xml")))


def _ir_files(model: str | os.PathLike) -> tuple[Path, Path]:
    """(the .xml, the metadata.yaml beside it) of an IR folder or .xml, each checked to exist."""
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            found = f"{len(xmls)} ({', '.join(x.name for x in xmls)})" if xmls else "none"
            raise ValueError(f"{path}: an OpenVINO model folder holds one .xml (the IR graph), found {found}; {REEXPORT}")
        path = xmls[0]
    elif path.suffix.lower() != ".xml":
        raise ValueError(f"{path}: an OpenVINO model is a <name>{SUFFIX}/ folder or its .xml")
    if not path.with_suffix(".bin").is_file():
        raise ValueError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it; {REEXPORT}")
    meta = path.parent / METADATA_FILE
    if not meta.is_file():
        raise ValueError(f"{meta} is missing: otadet's OpenVINO export keeps its metadata (names, imgsz, ...) there; {REEXPORT}")
    return path, meta


def read_ir_metadata(model: str | os.PathLike) -> tuple[Path, Path, dict]:
    """(the .xml, the metadata.yaml, its content) of an IR folder or .xml; a ValueError naming the
    file where it is not a YAML mapping (checked_metadata checks the keys)."""
    xml, meta = _ir_files(model)
    try:
        metadata = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{meta} is not valid YAML ({str(e).splitlines()[0]}); {REEXPORT}") from e
    if not isinstance(metadata, dict):
        raise ValueError(f"{meta} holds {type(metadata).__name__}, not the otadet metadata mapping; {REEXPORT}")
    return xml, meta, metadata


def export_openvino(
    model: nn.Module,
    *,
    folder: str | os.PathLike,
    imgsz: int,
    dynamic: bool = True,
    nms: NMSSettings | None = None,
    half: bool = False,
    metadata: dict,
) -> Path:
    """Write `model`'s InferenceGraph to `folder` (<stem>_openvino_model) as an OpenVINO IR; returns the folder.

    The ONNX graph (export_onnx at opset 17, same dynamic axes and NMS) is converted, so the
    IR has the same inputs and outputs: images (B, 3, H, W) -> output0 (B, A, 4 + C), or
    (B, max_det, 6) with `nms`. Weights stay float32; half=True fails (the precision is a
    run-time choice: predict/val half=True). `metadata` as export_onnx, written to metadata.yaml.
    """
    ov = _openvino()
    folder = Path(folder)
    if not folder.name.endswith(SUFFIX) or folder.name == SUFFIX:
        raise ValueError(f"export: folder {folder} should be named <stem>{SUFFIX}")
    if half:
        raise ValueError(OPENVINO_KEEPS_FP32)
    stem = folder.name[: -len(SUFFIX)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / f"{stem}.onnx"
        export_onnx(model, file=onnx_file, imgsz=imgsz, dynamic=dynamic, nms=nms, metadata=metadata, log=False)
        metadata = read_metadata(onnx_file)
        LOGGER.info(f"{colorstr('OpenVINO:')} converting the ONNX graph with openvino {ov.__version__}...")
        ir = ov.convert_model(str(onnx_file))
    args = {k: v for k, v in metadata["export_args"].items() if k != "simplify"}
    metadata["export_args"] = {**args, "format": "openvino", "openvino": ov.__version__}
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ir, str(folder / f"{stem}.xml"), compress_to_fp16=False)
    (folder / METADATA_FILE).write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8")
    shape = lambda port: str(port.get_partial_shape())  # noqa: E731  '?' a dynamic axis
    elapsed = time.perf_counter() - start
    _log_done("OpenVINO:", folder, shape(ir.inputs[0]), shape(ir.outputs[0]), nms, len(metadata["names"]), elapsed)
    return folder


def _head_convolutions(ir) -> list[str]:
    """Names of the head's prediction convolutions (quantize.HEAD_LAYERS, at every FPN level): the
    Convolution ops whose result reaches output0 through no other convolution. Found by position,
    not by weight name: the conversion folds the per-level box scale into bbox_pred's weights."""
    found, seen, stack = [], set(), list(ir.get_results())
    while stack:
        for port in stack.pop().inputs():
            node = port.get_source_output().get_node()
            if node.get_name() in seen:
                continue
            seen.add(node.get_name())
            if node.get_type_name() == "Convolution":
                found.append(node.get_friendly_name())
            else:
                stack.append(node)
    return found


def quantize_openvino(folder: str | os.PathLike, batches: list, *, data: str, head_fp32: bool = True) -> Path:
    """The int8 IR of the float32 IR `folder` (<stem>_openvino_model), calibrated on `batches`
    ((1, 3, H, W) float32 arrays), written to <stem>_int8_openvino_model beside it; returns that folder.
    Its metadata is the float32 one with export_args.int8/data and an `int8` entry."""
    ov = _openvino()
    try:
        import nncf
    except ImportError:
        raise ValueError("export format=openvino int8=True needs nncf: pip install otadet[openvino]") from None
    folder = Path(folder)
    xml, _, metadata = read_ir_metadata(folder)
    int8_folder = folder.with_name(f"{xml.stem}_int8{SUFFIX}")
    ir = ov.Core().read_model(str(xml))
    excluded = _head_convolutions(ir) if head_fp32 else []
    LOGGER.info(
        f"{colorstr('int8:')} nncf {nncf.__version__}: calibrating on {len(batches)} images, "
        f"{len(excluded)} head convolutions kept float32 ..."
    )
    start = time.perf_counter()
    quantized = nncf.quantize(
        ir, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=excluded)
    )
    if int8_folder.exists():
        shutil.rmtree(int8_folder)
    int8_folder.mkdir(parents=True)
    ov.save_model(quantized, str(int8_folder / f"{xml.stem}_int8.xml"), compress_to_fp16=False)
    metadata["export_args"] = {**metadata["export_args"], "int8": True, "data": data}
    metadata["int8"] = {
        "format": "nncf",
        "weights": "int8 per channel, symmetric",
        "activations": "8-bit per tensor, MinMax calibration, fast bias correction",
        "calibration_images": len(batches),
        "head_float32": bool(head_fp32),
        "float32_layers": [k.rstrip(".") for k in HEAD_LAYERS] if head_fp32 else [],
    }
    (int8_folder / METADATA_FILE).write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8")
    size = sum(f.stat().st_size for f in int8_folder.iterdir()) / 1e6
    elapsed = time.perf_counter() - start
    LOGGER.info(f"int8: {elapsed:.1f}s, saved as {int8_folder} ({size:.1f} MB); float32 IR kept as {folder}")
    return int8_folder


class OpenVINOModel(ExportedModel):
    """An otadet OpenVINO IR loaded for inference: model(images (B, 3, H, W)) -> DenseOutputs,
    the forward of ExportedModel (the same post-processing as ONNX and PyTorch).

    Args:
        file: the <stem>_openvino_model/ folder, or its .xml.
        threads: INFERENCE_NUM_THREADS (None = OpenVINO's default).
        half: run with the bf16 precision hint (see select_precision); default float32.
    Attributes besides ExportedModel's: precision ('fp32' | 'bf16'), xml (the IR's .xml).
    """

    def __init__(self, file: str | os.PathLike, *, threads: int | None = None, half: bool = False):
        super().__init__(file, threads=threads)
        self.select_precision(half)

    def _open(self, file: Path) -> tuple[Path, Path, dict]:
        ov = _openvino()
        self.xml, meta_file, metadata = read_ir_metadata(file)
        self.format = "openvino"
        self.precision = "fp32"
        self.compiled = None  # compiled on first use
        self.core = ov.Core()
        try:
            self.ir = self.core.read_model(str(self.xml))
        except RuntimeError as e:
            raise ValueError(f"{self.xml} is not an IR OpenVINO can read ({str(e).splitlines()[0]}); {REEXPORT}") from e
        return self.xml.parent, meta_file, metadata

    def _start(self) -> None:
        pass  # compiled on first use, with the precision then chosen

    def _output_width(self) -> int | None:
        width = self.ir.outputs[0].get_partial_shape()[-1]
        return width.get_length() if width.is_static else None

    def select_precision(self, half: bool) -> None:
        """half=True: OpenVINO's bf16 inference precision hint, where the CPU has bf16 arithmetic
        (AMX or AVX512_BF16); else a ValueError. half=False: f32."""
        if half and not cpu_bf16_supported():
            raise ValueError(
                f"half=True on {self.file}: this CPU has no bf16 arithmetic (no avx512_bf16/amx_bf16 in lscpu), so "
                "OpenVINO would run float32 anyway: use half=False"
            )
        precision = "bf16" if half else "fp32"
        if precision != self.precision:
            self.precision, self.compiled = precision, None

    def to(self, device: torch.device | str | None = None, *args, **kwargs) -> "OpenVINOModel":
        """OpenVINO runs on the CPU (its GPU plugin is for Intel GPUs): another device warns, and
        outputs come back on that device."""
        device = torch.device(device) if device is not None else self.device
        if device.type != "cpu" and device != self.device:
            LOGGER.warning(f"WARNING: {self.file} runs on the CPU through OpenVINO; its outputs are moved to {device}")
        self.device = device
        return self

    @torch.no_grad()
    def _run(self, images: Tensor) -> Tensor:
        if self.compiled is None:
            config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision]}
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = int(self.threads)
            self.compiled = self.core.compile_model(self.ir, "CPU", config)
        output = self.compiled(images.detach().cpu().float().numpy())[0]  # a copy (share_outputs=False)
        return torch.from_numpy(output).float().to(images.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, precision={self.precision}"
