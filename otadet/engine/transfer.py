"""Fine-tuning a detector checkpoint on a dataset with other classes: transfer what fits.

`transfer_weights` copies every tensor of a source state dict whose name and shape match the
destination network (backbone, FPN, towers, box and IoU branches) and leaves the rest at the
destination's own initialisation. The class layer (`CLASS_LAYER`) is special: when the class
lists differ it is not copied whole even if its shape happens to match (other classes in the
same rows would be wrong), it keeps the focal-prior initialisation the freshly built head has
(bias = -log((1 - prior_prob) / prior_prob), RetinaNet Sec. 4.1), and — with keep_class_rows —
each destination class whose name is in the source (e.g. `person` from COCO) gets its trained
row. Shapes: C=classes, K=channels in, k=kernel side.

`detector_from_checkpoint` is the one place a checkpoint becomes a network: its keys, names,
model_cfg, tensor shapes and finiteness are checked, so an edited or broken file fails naming
itself instead of deep inside load_state_dict or, with NaN weights, not at all.
"""

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ModelConfig, model_config_from_dict
from ..models.build import build_detector
from ..utils.checkpoint import CHECKPOINT_FORMAT
from ..utils.log import LOGGER

__all__ = ["CLASS_LAYER", "TransferReport", "transfer_weights", "read_detector_checkpoint", "detector_from_checkpoint"]

CLASS_LAYER = "head.cls_logits"  # its weight (C, K, k, k) and bias (C,) have one row per class


class TransferReport(NamedTuple):
    """What transfer_weights did; `describe()` is the line it logs."""

    transferred: int  # destination tensors copied whole from the source
    total: int  # tensors in the destination state dict
    reinitialised: list[str]  # destination tensors left at their initialisation (no same-name, same-shape source)
    kept_rows: list[str]  # class names whose class-layer rows came from the source

    def describe(self, source: str = "") -> str:
        origin = f" from {source}" if source else ""
        text = f"transferred {self.transferred}/{self.total} tensors{origin}; re-initialised: {', '.join(self.reinitialised) or 'none'}"
        if self.kept_rows:
            text += f"; kept the class rows of {len(self.kept_rows)} classes whose names match: {', '.join(self.kept_rows)}"
        return text


def transfer_weights(
    net: nn.Module,
    state: dict[str, Tensor],
    *,
    src_names: list[str],
    dst_names: list[str],
    keep_class_rows: bool = True,
    source: str = "",
    log: bool = True,
) -> TransferReport:
    """Copy `state` (a source detector's state dict) into `net` where names and shapes match.

    Args:
        net: the destination detector, freshly built for `dst_names` (class layer at the focal prior).
        state: the source state dict; src_names its class names, in label order.
        keep_class_rows: where the classes differ, copy the class-layer rows of classes whose
            names are in both lists.
    Returns a TransferReport (and logs its line unless log=False).
    """
    same_classes = list(src_names) == list(dst_names)
    target = net.state_dict()
    updates: dict[str, Tensor] = {}
    reinitialised: list[str] = []
    for key, dst in target.items():
        src = state.get(key)
        is_class_layer = key.startswith(CLASS_LAYER + ".")
        if src is not None and src.shape == dst.shape and (same_classes or not is_class_layer):
            updates[key] = src
        else:
            reinitialised.append(key)
    copied = len(updates)  # whole tensors; class rows kept below are partial and stay 're-initialised'
    kept: list[str] = []
    if not same_classes and keep_class_rows:
        kept = _copy_class_rows(target, state, updates, src_names, dst_names)
    net.load_state_dict({**target, **updates})
    report = TransferReport(copied, len(target), reinitialised, kept)
    if log:
        LOGGER.info(report.describe(source))
    return report


def _copy_class_rows(
    target: dict[str, Tensor], state: dict[str, Tensor], updates: dict[str, Tensor], src_names: list[str], dst_names: list[str]
) -> list[str]:
    """Into `updates`, the class layer with the source rows of the shared class names; returns those names."""
    src_row = {name: i for i, name in enumerate(src_names)}
    pairs = [(i, src_row[name]) for i, name in enumerate(dst_names) if name in src_row]  # (dst row, src row)
    if not pairs:
        return []
    for part in ("weight", "bias"):
        key = f"{CLASS_LAYER}.{part}"
        dst, src = target.get(key), state.get(key)
        if dst is None or src is None or src.shape[1:] != dst.shape[1:] or src.shape[0] != len(src_names):
            return []  # another head width: nothing row-wise to keep
    for part in ("weight", "bias"):
        key = f"{CLASS_LAYER}.{part}"
        rows = target[key].clone()  # (C_dst, ...) at the focal prior
        dst_index = torch.tensor([d for d, _ in pairs])
        src_index = torch.tensor([s for _, s in pairs])
        rows[dst_index] = state[key][src_index].to(rows.dtype)
        updates[key] = rows
    return [dst_names[d] for d, _ in pairs]


def read_detector_checkpoint(pretrained) -> dict | None:
    """The otadet checkpoint the `pretrained` run key names, or None when it names something
    else (a backbone state dict, 'torchvision[:WEIGHTS]', true/false/null)."""
    if not isinstance(pretrained, str) or pretrained == "torchvision" or pretrained.startswith("torchvision:"):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return None  # the backbone loader names the missing file
    try:  # mmap: a backbone file is only peeked at, not read twice
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a weights-only file; the backbone loader says what is wrong with it
        return None
    return state if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT else None


def detector_from_checkpoint(state: dict, where: str) -> tuple[ModelConfig, list[str], nn.Module]:
    """(model config, class names, network with the checkpoint's weights) of an otadet checkpoint
    `state` read from `where`; a ValueError naming `where` if any part of it does not fit."""
    absent = [key for key in ("model_cfg", "names", "model") if key not in state]
    if absent:
        raise ValueError(f"{where} has no {', '.join(absent)}: not a detector checkpoint (or an edited one) — use a best.pt/last.pt of a run")
    names = state["names"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: 'names' is {names!r:.80}, not a list of class names — the file was edited or is broken")
    cfg = model_config_from_dict(state["model_cfg"], where=f"{where}: model_cfg")
    net = build_detector(cfg, len(names), pretrained=False)
    try:
        net.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).replace("\n", " ").replace("\t", "")[:300]
        raise ValueError(
            f"{where}: its weights do not fit its own model_cfg and {len(names)} names ({first}) — the file was edited or is broken"
        ) from e
    broken = [k for k, v in state["model"].items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(
            f"{where}: {len(broken)} weight tensors hold NaN or inf (e.g. {broken[0]}); this checkpoint cannot predict — "
            "use the run's last good checkpoint (weights/last.pt or an iter*.pt) or train again"
        )
    return cfg, list(names), net
