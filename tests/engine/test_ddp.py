"""DDP on CPU (gloo, 2 processes): the run finishes, both ranks hold the same weights, and they
equal a single-process run with the same total batch.

Why equality holds: the data order and augmentations are functions of (seed, epoch, image)
(engine/sampling.py), so at every step the two ranks together see the same 4 images as the
single process; the loss is normalised by the positives averaged over ranks, and DDP averages
the gradients, so the summed gradient is the single process's up to float summation order.
Two things would break it and are removed from this test: BatchNorm batch statistics (per rank
on CPU, where SyncBatchNorm does not run — the test model uses frozen BN; the head's GroupNorm
is per image) and padding (a batch is padded to its largest image; here all images are 128x96).
SGD keeps the comparison linear in the gradients (Adam's first steps are ~lr*sign(g), which
flips on float noise where g ~ 0).
"""

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from otadet import Detector
from otadet.config import load_model_config
from otadet.engine.launch import free_port

from tiny_run import TINY_RUN

RUN = dict(TINY_RUN, batch=4, iters=3, optimizer="sgd", lr0=0.04, momentum=0.9, weight_decay=1e-4, device="cpu")


def _spy(captured: dict, original):
    """train_one_epoch that also records the bare model's weights before the first and after each epoch."""

    def spy(model, criterion, loader, optimizer, loop, **kwargs):
        captured.setdefault("start", {k: v.clone() for k, v in loop.net.state_dict().items()})
        result = original(model, criterion, loader, optimizer, loop, **kwargs)
        captured["end"] = {k: v.clone() for k, v in loop.net.state_dict().items()}
        return result

    return spy


def _worker(rank: int, world: int, port: int, model: str, data: str, project: str, out: str) -> None:
    # What torchrun would set; run_training detects it and joins a gloo process group.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import otadet.engine.trainer as trainer

    captured: dict = {}
    trainer.train_one_epoch = _spy(captured, trainer.train_one_epoch)  # run_training looks it up at call time
    Detector(model, verbose=False).train(data=data, project=project, name="ddp", **RUN)
    torch.save(captured, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def frozen_bn_model(tmp_path_factory) -> Path:
    cfg = load_model_config("ota_tiny.yaml").to_dict()
    cfg["backbone"]["norm"] = "frozen_bn"
    path = tmp_path_factory.mktemp("model") / "ota_tiny_frozen.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_gloo_ranks_equal_one_process(frozen_bn_model, train_data, tmp_path, restore_determinism, monkeypatch):
    mp.spawn(_worker, args=(2, free_port(), str(frozen_bn_model), str(train_data), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    last = torch.load(tmp_path / "ddp" / "train" / "ddp" / "weights" / "last.pt", weights_only=True)
    assert last["iteration"] == 3 and last["world_size"] == 2 and last["train_args"]["batch"] == 4
    assert not (tmp_path / "ddp" / "train" / "ddp2").exists()  # one run folder, written by rank 0
    for name, value in ranks[0]["end"].items():
        assert torch.equal(value, ranks[1]["end"][name]), name  # DDP keeps the ranks identical
        assert torch.equal(value, last["model"][name]), name

    import otadet.engine.trainer as trainer

    captured: dict = {}
    monkeypatch.setattr(trainer, "train_one_epoch", _spy(captured, trainer.train_one_epoch))
    Detector(str(frozen_bn_model), verbose=False).train(data=str(train_data), project=str(tmp_path / "one"), name="one", **RUN)
    moved = worst = 0.0
    for name, value in ranks[0]["end"].items():
        if not value.dtype.is_floating_point:
            continue
        assert torch.equal(ranks[0]["start"][name], captured["start"][name]), name  # same initial weights
        torch.testing.assert_close(value, captured["end"][name], rtol=1e-4, atol=2e-6, msg=name)
        moved = max(moved, (value - ranks[0]["start"][name]).abs().max().item())
        worst = max(worst, (value - captured["end"][name]).abs().max().item())
    assert moved > 1e-3  # training moved the weights far more than the tolerance
    print(f"2 ranks vs 1 process after 3 steps: max |difference| {worst:.2g}, max weight change {moved:.2g}")
