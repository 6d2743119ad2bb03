"""Validation at the edge, shared by the model/run config and the data YAMLs.

YAML is read with yaml.safe_load only; unknown keys fail with the nearest valid names
(difflib), as Ultralytics' check_dict_alignment does.
"""

import difflib
import os
from pathlib import Path

import yaml

__all__ = ["ConfigError", "read_yaml", "check_keys"]


class ConfigError(ValueError):
    """A config file or argument is wrong; the message names the key/file and the fix."""


def read_yaml(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file ({} for an empty file), read with yaml.safe_load."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def check_keys(given: dict, valid, where: str, error: type[ConfigError] = ConfigError) -> None:
    """Raise `error` on keys of `given` not in `valid`, suggesting the nearest valid names."""
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(valid), n=3, cutoff=0.5)
        hint = f" — did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        lines.append(f"{where}: unknown key '{key}'{hint}")
    lines.append(f"valid keys: {', '.join(sorted(valid))}")
    raise error("\n".join(lines))
