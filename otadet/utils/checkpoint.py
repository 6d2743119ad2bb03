"""Checkpoints: plain dicts of tensors and Python values, written atomically, read weights_only.

A checkpoint holds everything to rebuild and resume: {'format', 'version', 'date',
'model_cfg' (ModelConfig as a dict), 'names', 'model' (state dict), 'optimizer', 'epoch',
'iteration', 'best_fitness', 'train_args'}.
"""

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "otadet-checkpoint-v1"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` through a temp file in the same folder and an atomic rename,
    so a crash mid-write leaves the previous file intact."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "version": __version__, "date": datetime.now().isoformat(), **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # disk full shows as torch's "unexpected pos ..." RuntimeError
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            f"could not write checkpoint {path} ({type(e).__name__}: {e}); {free / 2**30:.2f} GiB free on "
            f"{path.parent} — free some space or set project= to another disk; the previous {path.name}, if any, is intact"
        ) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read an otadet checkpoint with weights_only=True; a file that is not one fails clearly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of every kind: the file is not a plain checkpoint
        raise ValueError(
            f"{path} is not an otadet checkpoint that loads with weights_only=True ({type(e).__name__}: {e}); "
            "train one with `otadet train` or pass a model YAML"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an otadet checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
            "a backbone state dict goes in the model YAML as backbone.pretrained"
        )
    return state
