"""Batching: padding shapes and values, gt masks, and seeded, repeatable loaders."""

import numpy as np
import torch

from otadet.datasets.data_yaml import DataSpec
from otadet.datasets.loader import Batch, build_dataloader, collate


def _sample(h, w, boxes, labels, image_id):
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w) + 1  # no zeros inside
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
        "orig_size": (2 * h, 2 * w),
        "scale": 0.5,
        "path": f"/x/{image_id}.jpg",
    }
    return image, target


def test_collate_pads_images_and_gts():
    a = _sample(50, 75, [[1, 2, 3, 4], [5, 6, 7, 8]], [2, 0], 11)
    b = _sample(40, 100, [], [], 12)
    batch = collate([a, b], size_divisible=32)
    assert batch.images.shape == (2, 3, 64, 128)  # max 50 x 100 rounded up to multiples of 32
    torch.testing.assert_close(batch.images[0, :, :50, :75], a[0])
    torch.testing.assert_close(batch.images[1, :, :40, :100], b[0])
    assert batch.images[0, :, 50:].abs().sum() == 0 and batch.images[0, :, :, 75:].abs().sum() == 0
    assert batch.images[1, :, 40:].abs().sum() == 0 and batch.images[1, :, :, 100:].abs().sum() == 0
    assert batch.gt_boxes.shape == (2, 2, 4) and batch.gt_labels.shape == (2, 2)
    torch.testing.assert_close(batch.gt_boxes[0], a[1]["boxes"])
    assert batch.gt_boxes[1].abs().sum() == 0
    assert batch.gt_labels.tolist() == [[2, 0], [0, 0]]
    assert batch.gt_mask.tolist() == [[True, True], [False, False]]
    assert batch.image_ids.tolist() == [11, 12] and batch.image_ids.dtype == torch.int64
    assert batch.scales.tolist() == [0.5, 0.5] and batch.scales.dtype == torch.float32
    assert batch.orig_sizes.tolist() == [[100, 150], [80, 200]]
    assert batch.paths == ["/x/11.jpg", "/x/12.jpg"]


def test_collate_without_gts_and_exact_multiples():
    batch = collate([_sample(64, 32, [], [], 1)], size_divisible=32)
    assert batch.images.shape == (1, 3, 64, 32)
    assert batch.gt_boxes.shape == (1, 0, 4) and batch.gt_labels.shape == (1, 0) and batch.gt_mask.shape == (1, 0)
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, Batch) and moved.paths == batch.paths
    assert all(torch.equal(x, y) for x, y in zip(moved[:-1], batch[:-1]))


def _spec(root):
    return DataSpec(
        yaml_file=root / "shapes.yaml",
        format="coco",
        root=root,
        train_images=root / "images" / "train",
        val_images=root / "images" / "val",
        train_annotations=root / "annotations" / "train.json",
        val_annotations=root / "annotations" / "val.json",
        names=["circle", "rectangle", "triangle", "cross"],
        builtin="shapes",
    )


def _epoch(loader):
    return [(b.images.clone(), b.gt_boxes.clone(), b.image_ids.clone()) for b in loader]


def _same(x, y):
    return len(x) == len(y) and all(all(torch.equal(p, q) for p, q in zip(a, b)) for a, b in zip(x, y))


def test_train_loader_is_seeded(shapes_root):
    spec = _spec(shapes_root)
    kwargs = dict(imgsz=[96, 128], max_size=200, batch=4, workers=0, shuffle=True)
    loader = build_dataloader(spec, "train", seed=1, **kwargs)
    first = _epoch(loader)
    assert len(first) == 10 and len(loader.dataset) == 40 and loader.dataset.names == spec.names
    assert _same(first, _epoch(build_dataloader(spec, "train", seed=1, **kwargs)))
    assert not _same(first, _epoch(build_dataloader(spec, "train", seed=2, **kwargs)))
    for images, gt_boxes, _ in first:
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0 and max(images.shape[2:]) <= 224
        assert gt_boxes.min() >= 0 and gt_boxes[..., 2].max() <= 200 and gt_boxes[..., 3].max() <= 200


def test_val_loader_matches_dataset_with_a_worker(shapes_root):
    spec = _spec(shapes_root)
    loader = build_dataloader(spec, "val", imgsz=128, max_size=200, batch=3, workers=1, shuffle=False)
    assert loader.persistent_workers
    batches = list(loader)
    assert [b.images.shape[0] for b in batches] == [3, 1]
    assert torch.cat([b.image_ids for b in batches]).tolist() == loader.dataset.ids
    image, target = loader.dataset[0]
    n = len(target["labels"])
    assert batches[0].gt_mask[0].sum() == n
    torch.testing.assert_close(batches[0].gt_boxes[0, :n], target["boxes"])
    torch.testing.assert_close(batches[0].images[0, :, : image.shape[1], : image.shape[2]], image)
    # Unaugmented: the resize factor maps the original size to the input size.
    h, w = batches[0].orig_sizes[0].tolist()
    assert np.isclose(min(h, w) * batches[0].scales[0].item(), 128) or np.isclose(max(h, w) * batches[0].scales[0].item(), 200)
