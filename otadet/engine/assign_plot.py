"""The assignment visualiser (the paper's Figure 3): draw `Assignment`s.

One panel per assigner: a caption (assigner, level, what computed the costs, the plan's
statistics), the network input enlarged to >= MIN_SIDE px with every gt box in its own colour
and, on the FPN level shown, a dot in the gt's colour at each anchor it made positive; a white
ring marks an ambiguous anchor (Assignment.ambiguity says which), positive or not. Below, each
gt's index, class, k and positives in its colour. Four assigners sit side by side.
Shapes: A = anchor points, G = gts.
"""

import colorsys
import math
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

if TYPE_CHECKING:  # assign_vis imports this module to save its pictures
    from .assign_vis import Assignment

__all__ = ["Marker", "markers", "gt_colours", "pick_strides", "plot_assignment", "plot_assignments"]

MIN_SIDE = 480  # the drawn image's shorter side is enlarged by an integer factor to at least this
FONT, FONT_SCALE, LINE = cv2.FONT_HERSHEY_SIMPLEX, 0.42, 17  # caption and legend text; LINE = px per text row
LEGEND_COLUMN = 150  # px per legend column
BACKGROUND, RING, TEXT, WARN = (32, 32, 32), (255, 255, 255), (235, 235, 235), (60, 80, 255)
GAP = 8  # px between side-by-side panels


class Marker(NamedTuple):
    """One drawn anchor, in network-input pixels."""

    x: float
    y: float
    stride: int
    gt: int  # the gt it is positive for, -1 if none (then it is drawn only when ambiguous)
    ambiguous: bool


def gt_colours(num_gts: int) -> list[tuple[int, int, int]]:
    """A distinct bright BGR colour per gt: hues a golden-ratio step apart."""
    colours = []
    for i in range(num_gts):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(g * 255), int(r * 255)))
    return colours


def pick_strides(assignments: "list[Assignment]", level) -> list[int]:
    """The strides to draw: `level` 'all', one stride (8) or level name ('P3'), or 'best' = the level
    with the most positives over all the assignments (the first on a tie)."""
    strides = sorted(int(s) for s in assignments[0].level_positives())
    if level == "all":
        return strides
    if level in (None, "best"):
        totals = {s: sum(a.level_positives()[s] for a in assignments) for s in strides}
        return [max(strides, key=lambda s: totals[s])]
    names = {f"P{int(math.log2(s))}": s for s in strides}
    if level in names:
        return [names[level]]
    if isinstance(level, int) and level in strides:
        return [level]
    raise ValueError(f"level={level!r}: use best, all, a stride ({', '.join(map(str, strides))}) or a level ({', '.join(names)})")


def markers(assignment: "Assignment", strides: list[int]) -> list[Marker]:
    """The anchors drawn on `strides`: every positive and every ambiguous one, coarse levels first."""
    out = []
    for stride in sorted(strides, reverse=True):  # fine levels last, on top
        on_level = assignment.strides == stride
        drawn = on_level & ((assignment.matched >= 0) | assignment.ambiguous)
        for i in drawn.nonzero().flatten().tolist():
            x, y = assignment.points[i].tolist()
            out.append(Marker(x, y, stride, max(int(assignment.matched[i]), -1), bool(assignment.ambiguous[i])))
    return out


def _factor(image: np.ndarray) -> int:
    return max(1, math.ceil(MIN_SIDE / min(image.shape[:2])))


def _radius(stride: int, factor: int) -> int:
    return int(min(max(2, 0.3 * stride * factor), 10))  # < half the point spacing: dots never cover a neighbour's centre


def _caption(a: "Assignment", strides: list[int]) -> list[tuple[str, tuple]]:
    level = "all levels" if len(strides) > 1 else f"P{int(math.log2(strides[0]))} (stride {strides[0]})"
    shown = sum(a.level_positives()[s] for s in strides)
    s = a.stats
    line1 = f"{a.assigner.upper()}  {level}: {shown} of {int(s.get('num_pos', 0))} positives shown"
    line3 = f"gts {len(a.gt_boxes)}  mean k {s.get('mean_k', 0):.1f}  pos/gt {s.get('pos_per_gt', 0):.1f}  min {int(s['min_pos_per_gt'])}"
    line3 += f"  N_amb {int(s.get('num_ambiguous', 0))}"
    if "marginal_error" in s:
        line3 += f"  marginal err {s['marginal_error']:.1e}"
    line4 = f"dot = positive of the gt of its colour; ring = ambiguous: {a.ambiguity}"
    model = (TEXT, f"costs from {a.model}") if a.trained else (WARN, f"costs from an {a.model} - not a trained model")
    return [(line1, TEXT), (model[1], model[0]), (line3, TEXT), (line4, TEXT)]


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour, scale: float = FONT_SCALE) -> None:
    cv2.putText(canvas, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def _legend_rows(num_gts: int, width: int) -> tuple[int, int]:
    columns = max(1, width // LEGEND_COLUMN)
    return columns, math.ceil(num_gts / columns)


def plot_assignment(a: "Assignment", strides: list[int]) -> np.ndarray:
    """One panel (H', W', 3) uint8 BGR; its size depends only on the image and the number of gts."""
    f = _factor(a.image)
    h, w = a.image.shape[0] * f, a.image.shape[1] * f
    colours = gt_colours(len(a.gt_boxes))
    caption = _caption(a, strides)
    top = LINE * len(caption) + 8
    columns, rows = _legend_rows(len(a.gt_boxes), w)
    canvas = np.full((top + h + rows * LINE + 8, w, 3), BACKGROUND, np.uint8)
    for n, (text, colour) in enumerate(caption):
        _text(canvas, text, 6, LINE * (n + 1), colour)
    view = canvas[top : top + h]  # the image area, a view into the canvas
    view[:] = cv2.resize(a.image, (w, h), interpolation=cv2.INTER_NEAREST)
    view[:] = (view * 0.6).astype(np.uint8)  # dimmed, so the dots stand out
    for g, (box, colour) in enumerate(zip(a.gt_boxes.tolist(), colours)):
        x1, y1, x2, y2 = (int(round(v * f)) for v in box)
        cv2.rectangle(view, (x1, y1), (x2, y2), colour, 2 if f > 1 else 1, cv2.LINE_8)
        _text(view, str(g), x1 + 2, y1 + 11, colour, 0.35)
    for m in markers(a, strides):
        centre, r = (int(round(m.x * f)), int(round(m.y * f))), _radius(m.stride, f)
        if m.gt >= 0:
            cv2.circle(view, centre, r, colours[m.gt], -1, cv2.LINE_8)
            cv2.circle(view, centre, r, (0, 0, 0), 1, cv2.LINE_8)  # outline only: the centre keeps the gt's colour
        if m.ambiguous:
            cv2.circle(view, centre, r + 2, RING, 1, cv2.LINE_8)
    counts = a.num_positives.tolist()
    for g, colour in enumerate(colours):
        col, row = divmod(g, rows)
        label = int(a.gt_labels[g])
        name = a.names[label] if label < len(a.names) else str(label)
        _text(canvas, f"{g} {name[:9]} k{a.k[g]:.0f} p{counts[g]}", 6 + col * LEGEND_COLUMN, top + h + LINE * (row + 1), colour)
    return canvas


def plot_assignments(assignments: "list[Assignment]", level="best") -> np.ndarray:
    """The panels of the assignments side by side, all on the same strides (see pick_strides)."""
    strides = pick_strides(assignments, level)
    panels = [plot_assignment(a, strides) for a in assignments]
    if len(panels) == 1:
        return panels[0]
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
