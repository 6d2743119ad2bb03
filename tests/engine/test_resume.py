"""Exact resume: N steps -> stop (checkpoint, SIGTERM, SIGKILL) -> resume -> M steps equals N+M steps."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from otadet import Detector
from otadet.config import ConfigError

from tiny_run import TINY_RUN

# 5 iterations = 1.25 epochs of 4 iterations, so resuming at 3 crosses an epoch end. EMA on
# with a short ramp, so its state matters.
RUN = dict(TINY_RUN, iters=5, ema=True, ema_tau=2)


def _train(data, project, name, model="ota_tiny.yaml", **kwargs):
    return Detector(model, verbose=False).train(data=str(data), project=str(project), name=name, **{**RUN, **kwargs})


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"] and a["epoch"] == b["epoch"] and a["ema_updates"] == b["ema_updates"]
    for key in ("model", "train_model"):  # EMA weights and the raw weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for name in pa:
            assert torch.equal(pa[name], pb[name]), name


@pytest.fixture(scope="module")
def uninterrupted(train_data, tmp_path_factory):
    """5 iterations in one go, with a mid-epoch snapshot at iteration 3; returns (run dir, final last.pt)."""
    before = torch.are_deterministic_algorithms_enabled()
    project = tmp_path_factory.mktemp("runs")
    _train(train_data, project, "full", save_period=3)
    torch.use_deterministic_algorithms(before)
    run = project / "train" / "full"
    return run, _load(run / "weights" / "last.pt")


def test_resume_from_a_mid_epoch_checkpoint_is_exact_and_extends(uninterrupted, tmp_path, restore_determinism):
    run, final = uninterrupted
    assert final["iteration"] == 5
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    snapshot = _load(copy / "weights" / "iter3.pt")
    assert snapshot["iteration"] == 3 and snapshot["epoch"] == 0  # mid-epoch: 3 of 4 iterations
    Detector(copy / "weights" / "iter3.pt", verbose=False).train(resume=True)
    _assert_same_training_state(final, _load(copy / "weights" / "last.pt"))

    # Every 0-dim assigner statistic was logged to TensorBoard as assign/<key>.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in run.glob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {"assign/num_pos", "assign/mean_k", "assign/pos_per_gt", "assign/marginal_error", "lr", "loss/total"} <= tags

    # A finished run resumes only with a longer schedule (the keys given with resume= win).
    with pytest.raises(ConfigError, match="already finished 5 of 5 iterations"):
        Detector(verbose=False).train(resume=str(copy))
    Detector(verbose=False).train(resume=str(copy), iters=6)
    state = _load(copy / "weights" / "last.pt")
    assert state["iteration"] == 6 and state["train_args"]["iters"] == 6 and state["train_args"]["save_period"] == 3


def _cli_tokens(**kwargs) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in kwargs.items()]


def _start_and_interrupt(data, project, sig) -> subprocess.CompletedProcess:
    """Train in a subprocess saving every iteration; send `sig` once the first last.pt exists."""
    last = project / "train" / "run" / "weights" / "last.pt"
    command = [sys.executable, "-m", "otadet", "train", "model=ota_tiny.yaml", f"data={data}", f"project={project}", "name=run"]
    command += _cli_tokens(**{**RUN, "save_period": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    out, _ = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_exactly(sig, uninterrupted, train_data, tmp_path, restore_determinism):
    _, final = uninterrupted
    result = _start_and_interrupt(train_data, tmp_path, sig)
    run = tmp_path / "train" / "run"
    saved = _load(run / "weights" / "last.pt")
    if sig == signal.SIGKILL:
        assert result.returncode == -signal.SIGKILL, result.stdout[-2000:]
    else:  # SIGTERM: finishes the iteration in progress, writes last.pt, exits with 130
        assert result.returncode == 130, result.stdout[-2000:]
        assert "SIGTERM: stopping after this iteration" in result.stdout and f"resume={run}" in result.stdout
    # At most the work since the last save is lost: resume continues from the saved iteration.
    assert 1 <= saved["iteration"] < 5, saved["iteration"]
    Detector(verbose=False).train(resume=str(run))
    _assert_same_training_state(final, _load(run / "weights" / "last.pt"))


def test_graceful_stop_second_signal():
    from otadet.engine.resume import GracefulStop

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN when started in the background
    with GracefulStop(echo_window=2.0) as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert not stop.requested(torch.device("cpu"))
        stop._handle(signal.SIGTERM, None)
        assert stop.requested(torch.device("cpu")) and stop.signal == signal.SIGTERM
        stop._handle(signal.SIGINT, None)  # within the window: the same stop arriving twice
        stop._first -= 3.0
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            stop._handle(signal.SIGINT, None)
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored


def _stop_after(calls: int):
    """A GracefulStop.requested that reports a signal from its `calls`-th call on (one call per iteration)."""
    count = {"n": 0}

    def requested(self, device):
        count["n"] += 1
        return count["n"] >= calls

    return requested


def _csv_rows(run: Path) -> list[dict]:
    import csv

    timing = ("assign/seconds", "assign/time_share")  # wall-clock figures differ between any two runs
    with open(run / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]


@pytest.mark.parametrize("stop_at", [3, 4], ids=["mid-epoch", "epoch-end"])
def test_stop_keeps_the_epochs_bookkeeping(stop_at, uninterrupted, train_data, tmp_path, monkeypatch, restore_determinism):
    """A stop in the epoch's last iteration still validates, logs and saves that epoch; a stop
    mid-epoch carries the epoch's loss sums, so its results.csv row equals the uninterrupted one."""
    from otadet.engine.resume import GracefulStop, TrainingStopped

    full_run, final = uninterrupted
    with monkeypatch.context() as patch:
        patch.setattr(GracefulStop, "requested", _stop_after(stop_at))
        with pytest.raises(TrainingStopped, match="after epoch 1" if stop_at == 4 else "at iteration 3"):
            _train(train_data, tmp_path, "run")
    run = tmp_path / "train" / "run"
    saved = _load(run / "weights" / "last.pt")
    assert (saved["iteration"], saved["epoch"]) == ((4, 1) if stop_at == 4 else (3, 0))
    assert (run / "weights" / "best.pt").exists() == (stop_at == 4)
    assert (run / "results.csv").exists() == (stop_at == 4)
    if stop_at == 4:
        assert len(_csv_rows(run)) == 1  # epoch 1's row, written before stopping
    Detector(verbose=False).train(resume=str(run))
    _assert_same_training_state(final, _load(run / "weights" / "last.pt"))
    assert _csv_rows(run) == _csv_rows(full_run)  # every epoch's losses average all of its steps
