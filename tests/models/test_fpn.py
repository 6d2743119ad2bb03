"""P6/P7: torchvision's LastLevelP6P7 with its convolutions run in float32 under CPU autocast
where the input is smaller than the stride (oneDNN's bf16 weight gradient is garbage there)."""

import copy

import pytest
import torch
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from otadet.models.detector import P6P7


def _blocks(channels: int = 64) -> tuple[LastLevelP6P7, P6P7]:
    torch.manual_seed(0)
    theirs = LastLevelP6P7(channels, channels)
    torch.manual_seed(0)
    return theirs, P6P7(channels, channels)


def _weight_grads(block, p5: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        levels, names = block([p5], [p5], ["p5"])
    assert names == ["p5", "p6", "p7"]
    (levels[1].float().sum() + levels[2].float().square().sum()).backward()
    return [block.p6.weight.grad, block.p7.weight.grad]


def test_same_weights_keys_and_outputs_as_torchvision():
    theirs, ours = _blocks()
    assert list(theirs.state_dict()) == list(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    p5 = torch.randn(2, 64, 10, 13)
    expected, _ = theirs([p5], [p5], ["p5"])
    got, _ = ours([p5], [p5], ["p5"])
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(expected, got))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # maps wider than the stride: torchvision's path, bf16
        got, _ = ours([p5], [p5], ["p5"])
        expected, _ = theirs([p5], [p5], ["p5"])
    assert got[2].dtype == torch.bfloat16 and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("size", [(1, 1), (4, 1), (1, 4)], ids=["1x1", "4x1", "1x4"])
def test_bf16_weight_gradients_at_maps_smaller_than_the_stride(size):
    """Ten random P5 maps (oneDNN's garbage showed in about half the trials of one such map):
    every gradient of the bf16 step matches the float32 one."""
    _, block = _blocks()
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        p5 = torch.randn(2, 64, *size, generator=gen)
        low = _weight_grads(copy.deepcopy(block), p5, autocast=True)
        exact = _weight_grads(copy.deepcopy(block), p5, autocast=False)
        for g, ref in zip(low, exact):
            assert torch.isfinite(g).all()
            # bf16 inputs and weights (8 mantissa bits) with a float32 P6 -> P7 path: within 2%.
            torch.testing.assert_close(g, ref, rtol=0, atol=0.02 * float(ref.abs().max()))
