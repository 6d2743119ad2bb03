"""One training step of a real detector at 800x1333: float32 vs AMP (bf16, fp16 + GradScaler), optionally compiled.

    python benchmarks/amp_step.py --model ota_r50.yaml --batch 2 --iters 20     # needs a GPU for AMP

Runs the trainer's own train_one_epoch over synthetic batches (random images, 10 random gts
each, 800x1333 padded to 800x1344), so the step is exactly what `otadet train` does: forward
under autocast, assignment and losses in float32 outside it, backward, clip, optimizer step.
Prints a markdown table: ms per iteration (after 3 warm-up iterations), peak GPU memory, the
dtype the head produced. `--device cpu` runs the same code as a smoke test (AMP is a no-op there).
"""

import argparse
import time

import torch

from otadet.config import load_model_config, make_args
from otadet.criterion import build_criterion
from otadet.datasets.loader import Batch
from otadet.engine.resume import GracefulStop
from otadet.engine.schedule import LRSchedule
from otadet.engine.trainer import Loop, build_optimizer, train_one_epoch
from otadet.models.build import build_detector
from otadet.utils.torch_utils import resolve_amp


def synthetic_batch(batch: int, height: int, width: int, gts: int, classes: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, gts, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = 16 + torch.rand(batch, gts, 2, generator=g) * 300
    boxes = torch.cat((xy, (xy + wh).minimum(torch.tensor([width - 1.0, height - 1.0]))), dim=-1)
    return Batch(
        images=torch.randn(batch, 3, height, width, generator=g), gt_boxes=boxes,
        gt_labels=torch.randint(0, classes, (batch, gts), generator=g), gt_mask=torch.ones(batch, gts, dtype=torch.bool),
        ignore_boxes=torch.zeros(batch, 0, 4), ignore_mask=torch.zeros(batch, 0, dtype=torch.bool),
        image_ids=torch.arange(batch), scales=torch.ones(batch), orig_sizes=torch.tensor([[height, width]] * batch),
        paths=[""] * batch,
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model_name: str, batch: int, iters: int, mode: str, compile_model: bool, device: torch.device, size: tuple[int, int]) -> dict:
    cfg = load_model_config(model_name)
    net = build_detector(cfg, 80).to(device, memory_format=torch.channels_last)
    criterion = build_criterion(cfg, 80)
    args = make_args({"batch": batch}, model_defaults=cfg.train)
    optimizer = build_optimizer(net, args)
    amp = resolve_amp(mode != "fp32", device, bf16_supported=None if mode == "bf16" else False)
    if mode == "bf16" and amp.dtype != torch.bfloat16 and device.type == "cuda":
        raise SystemExit("this GPU has no bf16")
    model = torch.compile(net) if compile_model else net
    dtypes = {}
    hook = net.head.register_forward_hook(lambda m, i, o: dtypes.update(head=str(o[0].dtype).replace("torch.", "")))  # returns None
    loader = [synthetic_batch(batch, *size, 10, 80, seed=i) for i in range(4)]
    with GracefulStop() as stop:
        loop = Loop(net=net, schedule=LRSchedule.from_args(args, total=10**6), amp=amp,
                    scaler=torch.amp.GradScaler(device.type, enabled=amp.scaler), ema=None, device=device,
                    total=10**6, iters_per_epoch=len(loader), grad_clip=args.grad_clip, save_period=0,
                    save=lambda e, i, log: None, stop=stop, writer=None)  # fmt: skip
        warm = loader[:3]
        losses, it, _ = train_one_epoch(model, criterion, warm, optimizer, loop, epoch=0, epochs=1, iteration=0)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed = (loader * (iters // len(loader) + 1))[:iters]
        loop.iters_per_epoch = len(timed)
        start = time.perf_counter()
        losses, it, _ = train_one_epoch(model, criterion, timed, optimizer, loop, epoch=0, epochs=1, iteration=it)
        _sync(device)
        elapsed = (time.perf_counter() - start) / iters
    hook.remove()
    return {
        "ms": 1000 * elapsed, "mem": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"), "head": dtypes.get("head", "?"),
        "loss": losses.means()["loss/total"], "scaler": amp.scaler,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ota_r50.yaml")
    parser.add_argument("--batch", type=int, default=2, help="images per GPU (the paper: 16 on 8 GPUs = 2)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--modes", default="fp32,bf16,fp16")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1344], help="input height width (padded, multiples of 32)")
    parser.add_argument("--device", default="cuda:0", help="cpu runs the same code without AMP (a smoke test)")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"`python benchmarks/amp_step.py --model {opts.model} --batch {opts.batch} --iters {opts.iters}` on {name}, torch {torch.__version__}\n")
    print("| mode | compiled | ms / iteration | images / s | peak memory (GiB) | head output dtype | GradScaler | mean loss |")
    print("|---|---|---|---|---|---|---|---|")
    for compiled in (False, True) if opts.compile else (False,):
        for mode in opts.modes.split(","):
            r = run(opts.model, opts.batch, opts.iters, mode, compiled, device, tuple(opts.size))
            print(f"| {mode} | {compiled} | {r['ms']:.0f} | {1000 * opts.batch / r['ms']:.1f} | {r['mem']:.1f} | {r['head']} | {r['scaler']} | {r['loss']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
