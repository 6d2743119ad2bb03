"""Resize, flip and normalisation against hand-computed boxes and pixels."""

import numpy as np
import pytest

from otadet.datasets import transforms
from otadet.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomHorizontalFlip,
    Resize,
    build_transforms,
    to_tensor_normalized,
)


def test_resize_shorter_side_and_max_size_cap():
    image = np.zeros((100, 400, 3), np.uint8)
    boxes = np.array([[10, 20, 30, 40]], np.float32)
    # Shorter side 200 would need 2x, but the longer side caps at 600: 1.5x.
    out, out_boxes, scale = Resize(shorter=200, max_size=600)(image, boxes)
    assert out.shape == (150, 600, 3) and scale == 1.5
    np.testing.assert_allclose(out_boxes, [[15, 30, 45, 60]])
    out, out_boxes, scale = Resize(shorter=50, max_size=1000)(image, boxes)
    assert out.shape == (50, 200, 3) and scale == 0.5
    np.testing.assert_allclose(out_boxes, [[5, 10, 15, 20]])


def test_resize_boxes_follow_rounded_size():
    # 333 * 0.5 = 166.5 is rounded; boxes follow the rounded size, not the nominal 0.5.
    image = np.zeros((200, 333, 3), np.uint8)
    out, out_boxes, scale = Resize(shorter=100, max_size=1000)(image, np.array([[0, 0, 333, 200]], np.float32))
    assert scale == 0.5
    np.testing.assert_allclose(out_boxes, [[0, 0, out.shape[1], out.shape[0]]], rtol=1e-6)


def test_multiscale_draws_from_the_list():
    resize = Resize(shorter=[32, 48, 64], max_size=1000, rng=np.random.default_rng(0))
    image = np.zeros((10, 20, 3), np.uint8)
    heights = {resize(image, np.zeros((0, 4), np.float32))[0].shape[0] for _ in range(60)}
    assert heights == {32, 48, 64}


def test_module_rng_is_reseedable():
    image, boxes = np.zeros((10, 20, 3), np.uint8), np.zeros((0, 4), np.float32)
    resize = Resize(shorter=list(range(10, 40)), max_size=1000)
    transforms.seed_rng(5)
    first = [resize(image, boxes)[0].shape for _ in range(8)]
    transforms.seed_rng(5)
    assert [resize(image, boxes)[0].shape for _ in range(8)] == first


def test_flip_moves_pixels_and_boxes():
    image = np.zeros((4, 10, 3), np.uint8)
    image[1, 2] = 255  # pixel column 2 -> column 10 - 1 - 2 = 7
    boxes = np.array([[2, 1, 3, 2], [0, 0, 4, 4]], np.float32)
    out, out_boxes, scale = RandomHorizontalFlip(p=1.0)(image, boxes)
    assert scale == 1.0 and out[1, 7, 0] == 255 and out.sum() == 3 * 255
    np.testing.assert_array_equal(out_boxes, [[7, 1, 8, 2], [6, 0, 10, 4]])
    again, again_boxes, _ = RandomHorizontalFlip(p=1.0)(out, out_boxes)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(again_boxes, boxes)
    same, same_boxes, _ = RandomHorizontalFlip(p=0.0)(image, boxes)
    assert same is image and same_boxes is boxes


def test_to_tensor_normalized_is_rgb_chw():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    tensor = to_tensor_normalized(image)
    assert tensor.shape == (3, 2, 3) and tensor.is_contiguous()
    expected = [-IMAGENET_MEAN[0] / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1], (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    np.testing.assert_allclose(tensor[:, 1, 2].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("imgsz", [64, [32, 64]])
def test_eval_transform_is_deterministic(imgsz):
    image = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    evaluate = build_transforms(False, imgsz, 1000)
    outs = [evaluate(image, boxes) for _ in range(5)]
    for tensor, out_boxes, scale in outs:
        assert tensor.shape == (3, 64, 128) and scale == 1.6  # the largest size of a list
        np.testing.assert_array_equal(tensor.numpy(), outs[0][0].numpy())
        np.testing.assert_allclose(out_boxes, [[0, 0, 16, 16]])
