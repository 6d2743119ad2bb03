"""Where things live: shipped YAMLs (cfg/, data/), the cache for generated data, run folders."""

import os
from pathlib import Path

__all__ = ["asset_dir", "find_asset", "cache_dir", "increment_path", "newest_weights"]

_PACKAGE = Path(__file__).resolve().parent.parent


def asset_dir(kind: str) -> Path:
    """The folder of shipped YAMLs of `kind` ('cfg' or 'data').

    An installed wheel carries them inside the package (otadet/assets/<kind>, see setup.py);
    a source checkout or editable install has them at the repository's top level.
    """
    assert kind in ("cfg", "data"), kind
    installed = _PACKAGE / "assets" / kind
    return installed if installed.is_dir() else _PACKAGE.parent / kind


def find_asset(name: str | os.PathLike, kind: str) -> Path | None:
    """Resolve a YAML given as a path, or as a bare name shipped in cfg/ or data/.

    Returns None when neither exists; the caller raises with its own context.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.suffix == "":
        path = path.with_suffix(".yaml")
        if path.is_file():
            return path
    shipped = asset_dir(kind) / path.name
    return shipped if shipped.is_file() else None


def cache_dir() -> Path:
    """Cache for generated data (the built-in dataset): $OTADET_CACHE or ~/.cache/otadet."""
    root = os.environ.get("OTADET_CACHE") or Path.home() / ".cache" / "otadet"
    return Path(root).expanduser()


def increment_path(path: str | os.PathLike, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... the first that does not exist yet."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while (candidate := path.with_name(f"{path.name}{n}")).exists():
        n += 1
    return candidate


def newest_weights(root: str | os.PathLike = "runs/train") -> Path | None:
    """The most recently written runs/train/*/weights/best.pt, or None."""
    found = sorted(Path(root).glob("*/weights/best.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
