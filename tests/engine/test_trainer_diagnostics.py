"""Training diagnostics end to end: every assigner's statistics reach TensorBoard per iteration and
results.csv as their epoch means (read back from the event file, an independent record)."""

import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from otadet import Detector

from tiny_run import TINY_RUN

COMMON = ("mean_k", "pos_per_gt", "min_pos_per_gt", "num_ambiguous", "amb_per_image", "seconds", "time_share")


@pytest.mark.parametrize("assigner", ["ota", "atss"])
def test_diagnostics_logged_per_iteration_and_averaged_per_epoch(assigner, train_data, tmp_path, restore_determinism):
    Detector("ota_tiny.yaml", verbose=False).train(
        data=str(train_data), project=str(tmp_path), assigner=assigner, **{**TINY_RUN, "epochs": 1}
    )
    run = tmp_path / "train" / "exp"
    (row,) = list(csv.DictReader(open(run / "results.csv")))
    events = EventAccumulator(str(run))
    events.Reload()
    names = COMMON + (("marginal_error", "sinkhorn_iters") if assigner == "ota" else ())
    for name in names:
        values = [e.value for e in events.Scalars(f"assign/{name}")]
        assert len(values) == 4  # 8 images at batch 2
        assert float(row[f"assign/{name}"]) == pytest.approx(sum(values) / len(values), rel=1e-4, abs=1e-9), name
    shares = [e.value for e in events.Scalars("assign/time_share")]
    assert all(0 < s < 1 for s in shares)
    # The fewest positives of any gt is a count and never exceeds the mean (it may be 0: at 64 px an
    # OTA gt can lose every anchor to its neighbours, which is what this statistic is there to show).
    mins, means = ([e.value for e in events.Scalars(f"assign/{n}")] for n in ("min_pos_per_gt", "pos_per_gt"))
    assert all(lo == int(lo) and 0 <= lo <= mean for lo, mean in zip(mins, means))
