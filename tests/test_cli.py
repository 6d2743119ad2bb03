"""The otadet command: modes, key=value parsing, clear errors."""

import subprocess
import sys


from otadet.cli import main, parse_overrides


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "otadet", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_parse_overrides_types_values():
    assert parse_overrides(["epochs=3", "lr0=0.02", "val=false", "imgsz=[256,320]", "device=cpu", "name=my run"]) == {
        "epochs": 3,
        "lr0": 0.02,
        "val": False,
        "imgsz": [256, 320],
        "device": "cpu",
        "name": "my run",
    }


def test_help_and_cfg_list_modes_and_every_key():
    out = run_cli("help")
    assert out.returncode == 0 and "otadet train" in out.stdout and "ota_r50.yaml" in out.stdout
    out = run_cli("cfg")
    assert out.returncode == 0
    for key in ("epochs:", "lr0:", "conf:", "source:", "opset:"):
        assert key in out.stdout


def test_typo_key_exits_2_with_suggestion(capsys):
    assert main(["train", "model=ota_tiny.yaml", "epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epoch'" in err and "'epochs'" in err


def test_unknown_mode_and_bad_token(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["val", "epochs"]) == 2
    assert "is not key=value" in capsys.readouterr().err


def test_no_model_and_no_runs_says_how_to_train(tmp_path):
    out = run_cli("predict", "source=x.jpg", cwd=tmp_path)
    assert out.returncode == 2
    assert "otadet train model=ota_tiny.yaml" in out.stderr


def test_missing_data_yaml_names_the_file(capsys):
    assert main(["train", "model=ota_tiny.yaml", "data=nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_not_a_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    import torch

    torch.save({"weights": torch.zeros(2)}, bad)
    assert main(["val", f"model={bad}"]) == 2
    assert "not an otadet checkpoint" in capsys.readouterr().err
