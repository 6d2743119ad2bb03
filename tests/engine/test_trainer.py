"""The training loop's mixed-precision path, run on the CPU's autocast (the trainer itself only
turns AMP on for CUDA): the forward runs in the low precision, the assignment and losses in
float32, fp16 goes through a GradScaler, and the weights move."""

import copy

import pytest
import torch

from otadet.config import load_model_config, make_args
from otadet.criterion import build_criterion
from otadet.datasets.loader import Batch
from otadet.engine.resume import GracefulStop
from otadet.engine.schedule import LRSchedule
from otadet.engine.trainer import Loop, build_optimizer, train_one_epoch
from otadet.models.build import build_detector
from otadet.utils.torch_utils import AmpSettings


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 5, 2, generator=g) * 40
    boxes = torch.cat((xy, xy + 8 + torch.rand(2, 5, 2, generator=g) * 30), dim=-1).clamp(max=63)
    return Batch(
        images=torch.randn(2, 3, 64, 64, generator=g), gt_boxes=boxes, gt_labels=torch.randint(0, 4, (2, 5), generator=g),
        gt_mask=torch.ones(2, 5, dtype=torch.bool), ignore_boxes=torch.zeros(2, 0, 4), ignore_mask=torch.zeros(2, 0, dtype=torch.bool),
        image_ids=torch.arange(2), scales=torch.ones(2), orig_sizes=torch.tensor([[64, 64]] * 2), paths=["", ""],
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = load_model_config("ota_tiny.yaml")
    return cfg, build_detector(cfg, 4).to(memory_format=torch.channels_last)


# bf16 ran xfail until 2026-12-02: on these 64x64 images P6 is 1x1, and oneDNN's bf16 weight
# gradient of the stride-2 P7 convolution over it was garbage in about half the runs (most likely
# memory the kernel leaves unset, hence "order-dependent"). P6P7 (tests/models/test_fpn.py) runs
# that convolution in float32; this test is strict again.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16+scaler"])
def test_autocast_forward_float32_losses(dtype, tiny):
    cfg, net = tiny[0], copy.deepcopy(tiny[1])
    criterion = build_criterion(cfg, 4)
    seen, losses = {}, []
    net.head.register_forward_hook(lambda module, inputs, out: seen.update(head=out[0].dtype))  # returns None
    assigner = criterion.assigner

    def recording_assigner(points, strides, cls_logits, pred_boxes, *rest, **knobs):
        seen.setdefault("assigner", cls_logits.dtype)
        return assigner(points, strides, cls_logits, pred_boxes, *rest, **knobs)

    def recording_criterion(*args, **kwargs):
        loss, items, stats = criterion(*args, **kwargs)
        losses.append(loss)
        return loss, items, stats

    criterion.assigner = recording_assigner
    args = make_args({"batch": 2, "optimizer": "sgd", "lr0": 0.01, "warmup_iters": 0})
    optimizer = build_optimizer(net, args)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16, init_scale=2.0**10)
    before = [p.detach().clone() for p in net.parameters()]
    with GracefulStop() as stop:
        loop = Loop(
            net=net, schedule=LRSchedule.from_args(args, total=10), amp=AmpSettings(True, dtype, scaler.is_enabled(), ""),
            scaler=scaler, ema=None, device=torch.device("cpu"), total=10, iters_per_epoch=1, grad_clip=35.0,
            save_period=0, save=lambda e, i, log: None, stop=stop, writer=None,
        )  # fmt: skip
        log, iteration, stopped = train_one_epoch(net, recording_criterion, [_batch(0)], optimizer, loop, epoch=0, epochs=1, iteration=0)
    means = log.means()
    assert seen["head"] == dtype  # the forward ran under autocast
    assert seen["assigner"] == dtype  # handed the logits as produced; it casts to float32 itself
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)  # losses outside autocast
    assert (iteration, stopped) == (1, False) and set(means) >= {"loss/total", "assign/num_pos", "assign/mean_k"}
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay float32
    if scaler.is_enabled():
        assert scaler.get_scale() > 0 and scaler.state_dict()["scale"] == scaler.get_scale()
