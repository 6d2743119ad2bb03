"""LR schedule values, linear scaling, schedule presets, AMP settings, EMA, and the resumable sampler."""

import math

import pytest
import torch
from torch import nn

from otadet.config import SCHEDULES, ConfigError, load_model_config, make_args
from otadet.engine.ema import ModelEMA
from otadet.engine.sampling import SeededSamples, TrainSampler
from otadet.engine.schedule import LRSchedule, plan_iterations, scaled_lr
from otadet.engine.trainer import build_optimizer
from otadet.utils.dist import dist_env
from otadet.utils.torch_utils import resolve_amp, select_device


def test_coco_1x_lr_at_given_iterations():
    """ota_r50.yaml's train: block is the paper's 1x: 0.01 at batch 16, warmup 1000 from 0.001x, x0.1 at 60k and 80k of 90k."""
    args = make_args({}, model_defaults=load_model_config("ota_r50.yaml").train)
    assert (args.iters, args.batch, args.lr0, args.optimizer, args.momentum, args.weight_decay) == (90000, 16, 0.01, "sgd", 0.9, 1e-4)
    assert (args.imgsz, args.max_size) == (800, 1333)
    schedule = LRSchedule.from_args(args, total=plan_iterations(args, iters_per_epoch=7330)[0])
    expected = {
        0: 0.01 * 0.001,
        500: 0.01 * (0.001 * 0.5 + 0.5),  # halfway through the linear warmup
        999: 0.01 * (0.001 * 0.001 + 0.999),
        1000: 0.01,
        59999: 0.01,
        60000: 0.001,
        79999: 0.001,
        80000: 0.0001,
        89999: 0.0001,
    }
    for iteration, lr in expected.items():
        assert schedule(iteration) == pytest.approx(lr, rel=1e-12), iteration


def test_2x_and_crowdhuman_presets_and_precedence():
    r50 = load_model_config("ota_r50.yaml").train
    two = make_args({"schedule": "2x"}, model_defaults=r50)  # the CLI's schedule beats the model YAML's 1x keys
    assert two.iters == 180000 and two.imgsz == [640, 672, 704, 736, 768, 800]
    schedule = LRSchedule.from_args(two, total=two.iters)
    assert [schedule(i) / 0.01 for i in (119999, 120000, 159999, 160000)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert make_args({"schedule": "2x", "iters": 1000}).iters == 1000  # a key given with the preset wins
    crowd = make_args({"schedule": "crowdhuman"})
    assert (crowd.iters, crowd.epochs, crowd.max_size) == (0, 30, 1400)
    total, epochs = plan_iterations(crowd, iters_per_epoch=940)  # 15k images at batch 16
    assert (total, epochs) == (30 * 940, 30)
    decays = LRSchedule.from_args(crowd, total=total)
    assert decays(24 * 940 - 1) == pytest.approx(0.01) and decays(24 * 940) == pytest.approx(0.001)
    assert decays(27 * 940) == pytest.approx(0.0001)
    with pytest.raises(ConfigError, match="did you mean '2x'"):
        make_args({"schedule": "2X"})
    assert set(SCHEDULES) == {"1x", "2x", "crowdhuman"}


def test_iteration_based_stops_mid_epoch():
    args = make_args({"iters": 25, "epochs": 99})
    assert plan_iterations(args, iters_per_epoch=10) == (25, 3)  # the third epoch stops after 5 iterations
    assert plan_iterations(make_args({"epochs": 4}), iters_per_epoch=10) == (40, 4)


def test_linear_scaling_printed(log_messages):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, make_args({"batch": 8, "lr0": 0.01}))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert any("0.01 x 8/16 = 0.005" in m for m in log_messages)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # BatchNorm: no decay
    log_messages.clear()
    assert scaled_lr(0.01, 64) == pytest.approx(0.04) and "x 64/16" in log_messages[0]
    log_messages.clear()
    assert scaled_lr(0.01, 16) == 0.01 and not log_messages


def test_amp_settings_on_a_cpu_machine():
    cpu = resolve_amp(True, torch.device("cpu"), bf16_supported=False)  # a CPU without bf16 (see test_precision)
    assert not cpu.enabled and cpu.dtype == torch.float32 and not cpu.scaler and "no effect on this CPU" in cpu.note
    assert resolve_amp(False, torch.device("cpu")).enabled is False
    cuda = torch.device("cuda:0")  # no CUDA call is made when bf16 support is given
    bf16 = resolve_amp(True, cuda, bf16_supported=True)
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.scaler
    fp16 = resolve_amp(True, cuda, bf16_supported=False)
    assert fp16.enabled and fp16.dtype == torch.float16 and fp16.scaler
    # The GradScaler the trainer makes from these settings is a pass-through when disabled.
    scaler = torch.amp.GradScaler("cpu", enabled=cpu.scaler)
    loss = torch.tensor(3.0, requires_grad=True)
    assert scaler.scale(loss) is loss


def test_ema_matches_the_formula():
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    w0 = model[0].weight.detach().clone()
    expected = w0.clone()
    for u in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(4, 2))  # BN: running stats and num_batches_tracked move
        d = 0.9 * (1 - math.exp(-u / 2.0))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, expected, rtol=0, atol=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 3  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())
    again = ModelEMA(model, decay=0.9, tau=2.0)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and torch.equal(again.module[0].weight, ema.module[0].weight)


def test_sampler_shards_and_resumes():
    data = list(range(10))
    single = TrainSampler(rank=0, world_size=1, seed=3)
    single.wrap(data)
    single.set_epoch(2)
    order = [i for _, i in single]
    assert sorted(order) == data and all(e == 2 for e, _ in single)
    single.set_epoch(2, start=4)  # resume after 4 samples: the rest of the same order
    assert [i for _, i in single] == order[4:] and len(single) == 6
    ranks = []
    for r in range(2):
        s = TrainSampler(rank=r, world_size=2, seed=3)
        s.wrap(data)
        s.set_epoch(2)
        ranks.append([i for _, i in s])
    # Batch 2 per rank = batch 4 in one process: step k uses the same four images.
    for k in range(2):
        assert sorted(ranks[0][2 * k : 2 * k + 2] + ranks[1][2 * k : 2 * k + 2]) == sorted(order[4 * k : 4 * k + 4])
    single.set_epoch(3)
    assert [i for _, i in single] != order  # a new order every epoch


def test_seeded_samples_depend_only_on_epoch_and_index():
    import otadet.datasets.transforms as transforms

    class Draw:
        def __len__(self):
            return 5

        def __getitem__(self, index):
            return index, float(transforms._rng.random())

    samples = SeededSamples(Draw(), seed=0)
    a = [samples[(1, i)] for i in range(5)]
    b = [samples[(1, i)] for i in reversed(range(5))][::-1]
    assert a == b  # the order of loading does not matter
    assert samples[(2, 0)] != samples[(1, 0)]


def test_launcher_environment_detection(monkeypatch):
    assert dist_env({}) is None
    assert dist_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # torchrun with one process
    assert dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "node1"}
    assert dist_env(slurm) == (5, 16, 1, "slurm")
    assert dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: not distributed
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert select_device("cpu", local_rank=1) == torch.device("cpu")
    assert select_device("cpu,cpu", local_rank=1) == torch.device("cpu")


def test_launch_command_passes_resolved_args(tmp_path):
    from otadet.cli import parse_overrides
    from otadet.engine.launch import free_port, launch_command

    args = make_args({"device": "0,1", "imgsz": [640, 800], "name": "my run", "conf": None, "lr0": 0.02})
    port = free_port()
    command = launch_command(tmp_path / "model.yaml", args, nproc=2, port=port)
    assert command[1:8] == ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m"]
    assert command[8:11] == ["otadet", "train", f"model={tmp_path / 'model.yaml'}"]
    assert parse_overrides(command[11:]) == {k: v for k, v in args.to_dict().items() if k != "model"}
