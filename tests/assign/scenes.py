"""Random assignment inputs shaped like training, shared by the assigner tests and benchmarks.

A scene is one image's (cls_logits (A, C), pred_boxes (A, 4), gt_boxes (G, 4), gt_labels (G,)):
gts of many sizes (piled on a few centres when crowded), a box predicted around every anchor
point, low logits as from a detector early in training.
"""

import torch

STRIDES = (8, 16, 32, 64, 128)


def fcos_points(height, width, strides=STRIDES):
    """Cell centres of P3-P7 for a height x width input, level by level (as the detector lays
    them out) -> points (A, 2), strides (A,)."""
    pts, st = [], []
    for s in strides:
        h, w = -(-height // s), -(-width // s)
        ys, xs = torch.meshgrid(torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2, indexing="ij")
        pts.append(torch.stack((xs.flatten(), ys.flatten()), 1).float())
        st.append(torch.full((h * w,), float(s)))
    return torch.cat(pts), torch.cat(st)


def random_scene(
    gen, num_gts, points, strides, num_classes=10, height=800, width=1333, crowded=False, tiny=0,
    *, log_size=(2.5, 6.0), spread=40.0, margin=4.0,
):  # fmt: skip
    """One image: gt sides exp(U(log_size)) px (`tiny` of them 1-7 px), centres piled on 3 points
    with `spread` px of noise when crowded, kept `margin` px inside the image and >= margin/2 px wide."""
    A = points.shape[0]
    size = torch.exp(torch.empty(num_gts, 2).uniform_(*log_size, generator=gen))
    if tiny:
        size[:tiny] = torch.empty(tiny, 2).uniform_(1.0, 7.0, generator=gen)
    centre = torch.rand(num_gts, 2, generator=gen) * torch.tensor([width, height])
    if crowded:  # pile gts around a few centres so they overlap heavily
        centre = centre[:3][torch.randint(0, 3, (num_gts,), generator=gen)] + torch.randn(num_gts, 2, generator=gen) * spread
    gt = torch.cat((centre - size / 2, centre + size / 2), 1)
    gt = torch.stack(
        (gt[:, 0].clamp(0, width - margin), gt[:, 1].clamp(0, height - margin), gt[:, 2].clamp(margin, width), gt[:, 3].clamp(margin, height)), 1
    )
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + margin / 2)
    ltrb = strides[:, None] * torch.exp(torch.randn(A, 4, generator=gen) * 0.6 + 1.0)
    pred = torch.cat((points - ltrb[:, :2], points + ltrb[:, 2:]), 1)
    logits = torch.randn(A, num_classes, generator=gen) * 1.5 - 4.0
    labels = torch.randint(0, num_classes, (num_gts,), generator=gen)
    return logits, pred, gt, labels


def pad_batch(scenes):
    """Scenes -> (cls_logits (B, A, C), pred_boxes (B, A, 4), gt_boxes (B, G, 4), gt_labels (B, G), gt_mask (B, G))."""
    B, G = len(scenes), max(s[2].shape[0] for s in scenes)
    gt = torch.zeros(B, G, 4)
    labels = torch.zeros(B, G, dtype=torch.long)
    mask = torch.zeros(B, G, dtype=torch.bool)
    for i, (_, _, g, lab) in enumerate(scenes):
        gt[i, : len(g)], labels[i, : len(g)], mask[i, : len(g)] = g, lab, True
    return torch.stack([s[0] for s in scenes]), torch.stack([s[1] for s in scenes]), gt, labels, mask
