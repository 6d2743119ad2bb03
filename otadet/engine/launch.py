"""`otadet train device=0,1,2,3`: start one process per GPU with torchrun, no generated script.

The launching process writes the run folder (model.yaml, and weights/init.pt when fine-tuning
a checkpoint), then runs

    python -m torch.distributed.run --nproc_per_node N --master_port <free> -m otadet train model=<run>/model.yaml key=value ...

with every resolved run argument on the command line and project/name pinned to the same run
folder. The workers find RANK/WORLD_SIZE/LOCAL_RANK in their environment (utils/dist.py).
"""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from ..config import Args, ModelConfig
from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.dist import dist_env
from ..utils.log import LOGGER
from ..utils.torch_utils import device_list, select_device
from .resume import TrainingStopped

__all__ = ["needs_launch", "free_port", "launch_command", "launch_workers"]


def needs_launch(args: Args) -> bool:
    """Several devices asked for and no launcher around us yet."""
    return len(device_list(args.device)) > 1 and dist_env() is None


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(model: str | Path, args: Args, *, nproc: int, port: int) -> list[str]:
    """The torchrun command line; values are JSON, which the CLI reads back as YAML."""
    tokens = [f"{k}={json.dumps(v)}" for k, v in args.to_dict().items() if k != "model"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
        "-m", "otadet", "train", f"model={model}", *tokens,
    ]  # fmt: skip


def launch_workers(model_cfg: ModelConfig, args: Args, save_dir: Path, *, names: list[str], init_state: dict | None) -> dict:
    """Run the training in N torchrun workers writing to `save_dir`; returns run_training's dict."""
    for device in device_list(args.device):  # a missing GPU fails here, in one line, not in N workers
        select_device(device)
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    model = save_dir / "model.yaml"
    model.write_text(yaml.safe_dump(model_cfg.to_dict(), sort_keys=False))
    if init_state is not None:  # fine-tuning a checkpoint: the workers start from these weights
        model = save_checkpoint(
            {"model_cfg": model_cfg.to_dict(), "names": names, "model": init_state, "train_args": args.to_dict()}, weights / "init.pt"
        )
    nproc = len(device_list(args.device))
    args = args.replace(project=str(save_dir.parent.parent), name=save_dir.name, exist_ok=True)
    command = launch_command(model, args, nproc=nproc, port=free_port())
    LOGGER.info(f"launching {nproc} processes: {' '.join(command[:8])} ... (args in {save_dir / 'args.yaml'})")
    returncode, forwarded = _run_forwarding_signals(command)
    if forwarded and returncode != 0:
        raise TrainingStopped(f"stopped by {forwarded}; resume with `otadet train resume={save_dir}`")
    if returncode != 0:
        raise RuntimeError(f"distributed training exited with code {returncode}; resume with `otadet train resume={save_dir}`")
    last = weights / "last.pt"
    metrics = load_checkpoint(last).get("metrics", {})
    return {"save_dir": save_dir, "best": weights / "best.pt", "last": last, "metrics": metrics, "names": names}


def _run_forwarding_signals(command: list[str]) -> tuple[int, str | None]:
    """Run torchrun in its own session and pass SIGINT/SIGTERM on to it once: it stops the
    workers, which save last.pt (a Ctrl-C would otherwise reach them twice, directly and via
    torchrun). Returns the exit code and the name of the signal passed on, if any."""
    process = subprocess.Popen(command, start_new_session=True)
    forwarded: list[str] = []

    def forward(signum, frame):
        forwarded.append(signal.Signals(signum).name)
        process.send_signal(signum)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: signals stay with the default handlers
        pass
    try:
        return process.wait(), (forwarded[0] if forwarded else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
