"""Validation at the edge, shared by the model/run config and the data YAMLs.

YAML is read with a yaml.SafeLoader (no Python objects, ever) that also reads numbers written
with an exponent and no dot (1e-4, 5E3) as floats: PyYAML follows YAML 1.1, where those are
strings, while YAML 1.2, JSON and Python read them as numbers, as users type them. Unknown
keys fail with the nearest valid names (difflib), as Ultralytics' check_dict_alignment does.
"""

import difflib
import os
import re
from pathlib import Path

import yaml

__all__ = ["ConfigError", "read_yaml", "check_keys", "load_yaml"]


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader plus YAML 1.2's floats: 1e-4, 2E5, 1.5e3 (YAML 1.1 needs '1.0e-4')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text_or_stream):
    """yaml.safe_load with YAML 1.2 exponent floats (see the module docstring)."""
    return yaml.load(text_or_stream, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class ConfigError(ValueError):
    """A config file or argument is wrong; the message names the key/file and the fix."""


def read_yaml(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file ({} for an empty file), read with yaml.safe_load."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)
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
