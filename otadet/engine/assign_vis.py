"""The assignment visualiser (the paper's Figure 3, for any image and any assigner): compute.

The network runs once on the image, preprocessed as validation does; every asked assigner
labels its anchors from those outputs (the costs of OTA and SimOTA come from the predictions:
a trained model's, or an untrained one's, which `Assignment.trained` and the picture say).
Each `Assignment` holds, per gt, its k and the anchors it made positive, and per anchor whether
it is ambiguous:
    ota                  N_amb's anchors: no supplier sends it >= 90% of its unit of the plan
                         (assign.ota_plan, the same plan `ota` solves)
    fcos, atss, simota   anchors claimed by several gts before the tie-break (their num_ambiguous)
Plotting is engine/assign_plot.py. Shapes: A = anchor points, G = gts, C = classes.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ..assign import ASSIGNERS, mark_ignored, positives_per_gt
from ..assign.ota_plan import ota_plan
from ..config import Args, ModelConfig, eval_size, with_assigner
from ..datasets.loader import collate
from ..datasets.transforms import Resize, to_tensor_normalized
from ..models.build import build_detector
from ..utils.log import LOGGER
from ..utils.paths import increment_path
from ..utils.torch_utils import select_device
from .assign_inputs import LabelledImage, load_labelled_image
from .assign_plot import plot_assignments

__all__ = ["Assignment", "assign_image", "visualise_assignment", "AMBIGUITY_RULES"]

# What `Assignment.ambiguous` means, per assigner (also the picture's legend).
AMBIGUITY_RULES = {
    "ota": "max share of its unit < 0.9 (N_amb)",
    "fcos": "claimed by several gts",
    "atss": "claimed by several gts",
    "simota": "claimed by several gts",
}


@dataclass(frozen=True, eq=False)
class Assignment:
    """One assigner's labels for one image, in the network input's pixels (resized, unpadded)."""

    assigner: str
    image: np.ndarray  # (H, W, 3) uint8 BGR network input, before padding
    path: str  # the image file
    points: Tensor  # (A, 2) anchor points x y
    strides: Tensor  # (A,) FPN stride of each point
    gt_boxes: Tensor  # (G, 4) xyxy
    gt_labels: Tensor  # (G,) int64
    names: list[str]  # class names, by label
    matched: Tensor  # (A,) int64: gt index >= 0, -1 background, -2 ignore
    k: Tensor  # (G,) float: dynamic k (ota, simota), claims before the tie-break (fcos, atss)
    ambiguous: Tensor  # (A,) bool
    ambiguity: str  # what `ambiguous` means (AMBIGUITY_RULES)
    stats: dict  # the assigner's 0-dim statistics as floats, plus min_pos_per_gt
    model: str  # what computed the costs, e.g. "ota_tiny (best.pt)" or "UNTRAINED ota_tiny (random weights, seed 0)"
    trained: bool
    scale: float  # network input / original image

    @property
    def num_positives(self) -> Tensor:
        """(G,) anchors each gt made positive."""
        return positives_per_gt(self.matched[None], torch.ones(1, len(self.gt_boxes), dtype=torch.bool))[0]

    def positives(self, gt: int) -> Tensor:
        """(P,) indices of the anchors gt `gt` made positive."""
        return torch.nonzero(self.matched == gt).flatten()

    def level_positives(self) -> dict[int, int]:
        """Positives per FPN stride, every level listed."""
        return {int(s): int(((self.matched >= 0) & (self.strides == s)).sum()) for s in torch.unique(self.strides)}


def _preprocess(item: LabelledImage, imgsz: int, max_size: int):
    """Validation's resize + normalise + pad to 32 -> (Batch of one, input image (H, W, 3) BGR, scale)."""
    both = np.concatenate([item.boxes, item.ignore_boxes]).reshape(-1, 4)  # the ignore regions go through the same resize
    image, both, scale = Resize(shorter=imgsz, max_size=max_size)(item.image, both)
    n = len(item.boxes)
    target = {
        "boxes": torch.from_numpy(np.ascontiguousarray(both[:n], np.float32)).reshape(-1, 4),
        "labels": torch.from_numpy(item.labels),
        "ignore_boxes": torch.from_numpy(np.ascontiguousarray(both[n:], np.float32)).reshape(-1, 4),
        "image_id": 0, "orig_size": item.image.shape[:2], "scale": scale, "path": item.path,
    }  # fmt: skip
    return collate([(to_tensor_normalized(image), target)]), image, scale


@torch.no_grad()
def assign_image(
    net: nn.Module, cfg: ModelConfig, item: LabelledImage, *, assigners: list[str], imgsz: int, max_size: int,
    device: torch.device, names: list[str], model: str, trained: bool,
) -> list[Assignment]:  # fmt: skip
    """Run `net` once on the image and each assigner (at the model YAML's knobs for its own
    assigner, the function's defaults for the others) on its outputs -> one Assignment each."""
    batch, image, scale = _preprocess(item, imgsz, max_size)
    batch = batch.to(device)
    net.eval()
    outputs = net(batch.images)
    cls_logits, boxes = outputs.cls_logits.float(), outputs.boxes.float()
    G = batch.gt_boxes.shape[1]
    found = []
    for name in assigners:
        knobs = dict(with_assigner(cfg, name).assigner)
        knobs.pop("name")
        inputs = (outputs.points, outputs.strides, cls_logits, boxes, batch.gt_boxes, batch.gt_labels, batch.gt_mask)
        result = ASSIGNERS[name](*inputs, **knobs)
        result = mark_ignored(result, outputs.points, batch.ignore_boxes, batch.ignore_mask)
        stats = {key: float(v) for key, v in result.stats.items() if torch.is_tensor(v) and v.dim() == 0}
        counts = positives_per_gt(result.matched, batch.gt_mask)  # (1, G)
        stats["min_pos_per_gt"] = float(counts.min()) if G else 0.0
        k = result.stats.get("dynamic_k", torch.zeros(1, G))[0].float()  # (G,)
        ambiguous = _ambiguous(name, inputs, knobs, result.stats, G)
        found.append(
            Assignment(
                assigner=name, image=image, path=item.path, points=outputs.points.cpu(), strides=outputs.strides.cpu(),
                gt_boxes=batch.gt_boxes[0].cpu(), gt_labels=batch.gt_labels[0].cpu(), names=list(names),
                matched=result.matched[0].cpu(), k=k.cpu(), ambiguous=ambiguous.cpu(), ambiguity=AMBIGUITY_RULES[name],
                stats=stats, model=model,
                trained=trained, scale=float(scale),
            )  # fmt: skip
        )
    return found


def _ambiguous(name: str, inputs: tuple, knobs: dict, stats: dict, G: int) -> Tensor:
    """(A,) bool: the anchors AMBIGUITY_RULES[name] describes."""
    A = inputs[0].shape[0]
    if G == 0:
        return torch.zeros(A, dtype=torch.bool)
    if name != "ota":
        return stats["ambiguous"][0]
    ambiguous = ota_plan(*inputs, **knobs).ambiguous[0]
    if int(ambiguous.sum()) != int(stats["num_ambiguous"]):  # float rounding at the 0.9 boundary only
        LOGGER.warning(
            f"WARNING: ota's N_amb is {int(stats['num_ambiguous'])}, the dense plan's {int(ambiguous.sum())}: "
            "the picture marks the dense plan's"
        )
    return ambiguous


def visualise_assignment(net: nn.Module, cfg: ModelConfig, names: list[str], args: Args, *, weights: str, trained: bool) -> list[Assignment]:
    """`otadet assign`: load the labelled image (args.source, labels, data, split), assign it with
    args.assigner ('all' = the four; None = the model's), print per gt its k and positives, and
    with args.save write the picture to <project>/assign/<name>/. An untrained model's network is
    rebuilt from args.seed, so its picture is reproducible."""
    assigners = list(ASSIGNERS) if args.assigner == "all" else [args.assigner or cfg.assigner["name"]]
    if assigners[0] not in ASSIGNERS:
        raise ValueError(f"assigner={args.assigner!r}: use one of {', '.join(ASSIGNERS)} or all")
    item = load_labelled_image(args.source, args.labels, args.data, args.split)
    most = int(item.labels.max()) + 1 if len(item.labels) else 0
    if trained:
        if most > len(names):
            raise ValueError(f"the labels have class {most - 1} but {weights} has {len(names)} classes: pass labels of its dataset")
        model = f"{cfg.name} ({Path(weights).name})"
    else:
        names = item.names or names
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            net = build_detector(cfg, max(len(names), most), pretrained=False)
        model = f"UNTRAINED {cfg.name} (random weights, seed {args.seed})"
    device = select_device(args.device)
    imgsz = eval_size(args.imgsz)
    found = assign_image(
        net.to(device), cfg, item, assigners=assigners, imgsz=imgsz, max_size=args.max_size, device=device,
        names=names, model=model, trained=trained,
    )  # fmt: skip
    LOGGER.info(_table(found))
    if args.save:
        save_dir = increment_path(Path(args.project) / "assign" / args.name, exist_ok=args.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        file = save_dir / f"{Path(item.path).stem}_{args.assigner or assigners[0]}.png"
        cv2.imwrite(str(file), plot_assignments(found, args.level))
        LOGGER.info(f"assignment picture saved to {file}")
    return found


def _table(found: list[Assignment]) -> str:
    """Per gt its class, box and each assigner's k / positives; then each assigner's plan statistics."""
    a = found[0]
    h, w = a.image.shape[:2]
    lines = [f"{a.path}: {len(a.gt_boxes)} gts, input {w}x{h} (scale {a.scale:.3g}); costs from {a.model}"]
    lines.append(f"{'gt':>4} {'class':<12} {'box (input px)':<26}" + "".join(f"{f.assigner + ' k/pos':>14}" for f in found))
    counts = [f.num_positives.tolist() for f in found]
    for g, (box, label) in enumerate(zip(a.gt_boxes.tolist(), a.gt_labels.tolist())):
        name = a.names[label] if label < len(a.names) else str(label)
        cells = "".join(f"{f'{f.k[g]:.0f}/{c[g]}':>14}" for f, c in zip(found, counts))
        lines.append(f"{g:>4} {name[:12]:<12} {'[' + ', '.join(f'{v:.0f}' for v in box) + ']':<26}" + cells)
    for f in found:
        s = f.stats
        extra = f", marginal error {s['marginal_error']:.2e}" if "marginal_error" in s else ""
        lines.append(
            f"{f.assigner}: {int(s.get('num_pos', 0))} positives, mean k {s.get('mean_k', 0):.2f}, "
            f"positives per gt {s.get('pos_per_gt', 0):.2f} (min {int(s['min_pos_per_gt'])}), "
            f"N_amb {int(s.get('num_ambiguous', 0))} ({f.ambiguity}){extra}"
        )
    return "\n".join(lines)
