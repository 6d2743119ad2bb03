"""Dataset YAMLs (data/*.yaml): where a dataset's images and annotations are, and in which format.

A data YAML is a flat mapping with exactly the keys of `DataYaml`:

    format: coco                      # coco | crowdhuman | yolo
    path: coco                        # dataset root; relative -> next to the YAML, then $OTADET_DATASETS
    builtin: shapes                   # optional: generated on first use into cache_dir()/<path>
    generate: {seed: 0}               # optional, builtin only: settings for the generator
    train: train2017                  # image folders, relative to the root
    val: val2017
    train_annotations: annotations/instances_train2017.json   # coco: json; crowdhuman: .odgt
    val_annotations: annotations/instances_val2017.json       # (yolo: none, labels/<split> is used)
    box: fbox                         # crowdhuman only: fbox (full body, default) or vbox (visible)
    names: [person, ...]              # list, or dict {0: person, ...}; optional for coco/crowdhuman
    download: [http://...]            # optional metadata for the error message; never fetched

For crowdhuman the annotation keys default to annotation_{train,val}.odgt; for yolo the labels
of images/<split> are in labels/<split> (the last 'images' of the path becomes 'labels').
`load_data(name_or_path)` validates it once and returns a resolved `DataSpec`.
"""

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..utils.checks import ConfigError, check_keys, read_yaml
from ..utils.log import LOGGER
from ..utils.paths import asset_dir, cache_dir, find_asset
from .coco_json import category_names
from .shapes import generate_builtin, generator_settings
from .shapes_formats import BUILTIN_CONFIGS, write_extra_format
from .yolo import labels_dir_for

__all__ = ["DataError", "DataYaml", "DataSpec", "load_data", "datasets_dir"]

Split = Literal["train", "val"]
FORMATS = ("coco", "crowdhuman", "yolo")
_BOX_KEYS = ("fbox", "vbox")


class DataError(ConfigError):
    """A data YAML is wrong; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class DataYaml:
    """The schema of a data YAML: its keys, their types, which are required (no default)."""

    format: str
    path: str
    train: str
    val: str
    train_annotations: str | None = None  # coco: required; crowdhuman: default annotation_train.odgt
    val_annotations: str | None = None
    box: str | None = None  # crowdhuman: 'fbox' (default) or 'vbox'
    builtin: str | None = None  # 'shapes' | 'crowd'
    generate: dict | None = None  # ShapesConfig fields, builtin only
    names: list | dict | None = None  # class names, index = contiguous label
    download: str | list | None = None  # URLs shown when the dataset is missing


@dataclass(frozen=True)
class DataSpec:
    """A dataset resolved to existing paths; `names[label]` is the class of contiguous label."""

    yaml_file: Path
    format: str
    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    names: list[str]
    builtin: str | None
    box: str | None = None  # crowdhuman: which box is the target

    def images(self, split: Split) -> Path:
        """The image folder of 'train' or 'val'."""
        return {"train": self.train_images, "val": self.val_images}[split]

    def annotations(self, split: Split) -> Path:
        """The annotations of 'train' or 'val': COCO json, CrowdHuman .odgt, or the YOLO labels folder."""
        return {"train": self.train_annotations, "val": self.val_annotations}[split]


_BUILTINS = BUILTIN_CONFIGS  # builtin: -> its generator settings (shapes.ShapesConfig, crowd.CrowdConfig)


def datasets_dir() -> Path:
    """Where relative dataset paths are looked up: $OTADET_DATASETS or ~/datasets."""
    return Path(os.environ.get("OTADET_DATASETS") or Path.home() / "datasets").expanduser()


def _parse(raw: dict, where: str) -> DataYaml:
    """Check keys and types against `DataYaml`'s fields."""
    fields = dataclasses.fields(DataYaml)
    check_keys(raw, [f.name for f in fields], where, error=DataError)
    hints = typing.get_type_hints(DataYaml)
    for f in fields:
        required = f.default is dataclasses.MISSING
        if f.name not in raw or raw[f.name] is None:
            if required:
                raise DataError(f"{where}: missing required key '{f.name}'")
            continue
        allowed = tuple(t for t in typing.get_args(hints[f.name]) if t is not type(None)) or (hints[f.name],)
        if not isinstance(raw[f.name], allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise DataError(f"{where}: '{f.name}' must be {names}, got {type(raw[f.name]).__name__} {raw[f.name]!r}")
    return DataYaml(**raw)


def _download_hint(data: DataYaml) -> str:
    urls = [data.download] if isinstance(data.download, str) else list(data.download or [])
    return f"download and unzip {', '.join(urls)}" if urls else "put the dataset there"


def _resolve_root(data: DataYaml, yaml_file: Path, where: str) -> Path:
    """Absolute `path:` as is; a builtin's under the cache; else next to the YAML, then $OTADET_DATASETS."""
    path = Path(data.path).expanduser()
    if data.builtin is not None:  # generated on first use: an absolute path, or under the cache
        return path if path.is_absolute() else cache_dir() / path
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [yaml_file.parent / path, datasets_dir() / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " and ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{where}: dataset folder '{data.path}' not found (looked at {looked}) — "
        f"{_download_hint(data)} into {candidates[-1]}, or set $OTADET_DATASETS or 'path:' in {yaml_file}"
    )


def _ensure_builtin(data: DataYaml, root: Path, where: str) -> None:
    """Generate a builtin dataset on first use; refuse a cache made with other settings."""
    if data.builtin not in _BUILTINS:
        raise DataError(f"{where}: unknown builtin '{data.builtin}' — valid: {', '.join(_BUILTINS)}")
    settings = dict(data.generate or {})
    schema = [f.name for f in dataclasses.fields(_BUILTINS[data.builtin])]
    check_keys(settings, schema, f"{where}: generate", error=DataError)
    try:
        cfg = _BUILTINS[data.builtin](**settings)
        wanted = generator_settings(cfg)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: generate: {e}") from e
    record = root / "generate.json"
    if root.exists():
        found = json.loads(record.read_text()) if record.is_file() else None
        if found != wanted:
            raise DataError(
                f"{where}: the cached dataset {root} was made with other settings "
                f"({found if found is not None else 'no generate.json'}) than {wanted} — "
                f"delete {root} or change 'path:' to generate it again"
            )
    else:
        start = time.perf_counter()
        generate_builtin(root, cfg)
        LOGGER.info(f"Generated the built-in '{data.builtin}' dataset in {root} ({time.perf_counter() - start:.1f}s)")
    if data.format != "coco":  # the other formats are written alongside the COCO files, on first use
        write_extra_format(root, data.format)


def load_data(name_or_path: str | os.PathLike, *, require: tuple[Split, ...] = ("train", "val")) -> DataSpec:
    """Read and validate a data YAML (a path, or a name shipped in data/) into a `DataSpec`.

    The paths of each split in `require` must exist (a builtin dataset is generated first);
    pass require=("val",) to evaluate without the training images.
    Raises DataError for a malformed YAML, FileNotFoundError for a missing dataset.
    """
    yaml_file = find_asset(name_or_path, "data")
    if yaml_file is None:
        shipped = sorted(p.stem for p in asset_dir("data").glob("*.yaml"))
        raise FileNotFoundError(
            f"data '{name_or_path}': no such file, and no data YAML of that name in {asset_dir('data')} "
            f"(shipped: {', '.join(shipped) or 'none'}) — pass the path of a data YAML"
        )
    yaml_file = yaml_file.resolve()
    where = str(yaml_file)
    try:
        raw = read_yaml(yaml_file)
    except ConfigError as e:
        raise DataError(str(e)) from e
    data = _parse(raw, where)
    annotation_keys = _check_format(data, where)
    names = _check_names(data, where)
    root = _resolve_root(data, yaml_file, where)
    if data.builtin is not None:
        _ensure_builtin(data, root, where)
    paths = _split_paths(data, root, annotation_keys, where)
    _check_present(data, paths, require, root, where)
    return DataSpec(
        yaml_file=yaml_file, format=data.format, root=root, train_images=paths["train"], val_images=paths["val"],
        train_annotations=paths["train_annotations"], val_annotations=paths["val_annotations"],
        names=names if names is not None else _names_from_annotations(data, paths, where), builtin=data.builtin,
        box=(data.box or "fbox") if data.format == "crowdhuman" else None,
    )  # fmt: skip


def _check_format(data: DataYaml, where: str) -> dict[str, str | None]:
    """The format and the keys that go with it; returns each split's annotation file key (None: yolo)."""
    if data.format not in FORMATS:
        raise DataError(f"{where}: format '{data.format}' is not supported — use one of {', '.join(FORMATS)}")
    if data.generate is not None and data.builtin is None:
        raise DataError(f"{where}: 'generate' is only for builtin datasets — remove it or set 'builtin:'")
    if data.box is not None and (data.format != "crowdhuman" or data.box not in _BOX_KEYS):
        raise DataError(f"{where}: 'box: {data.box}' — 'box' is for format crowdhuman only, one of {', '.join(_BOX_KEYS)}")
    annotation_keys = {"train": data.train_annotations, "val": data.val_annotations}
    if data.format == "coco":
        for split, value in annotation_keys.items():
            if value is None:
                raise DataError(f"{where}: missing required key '{split}_annotations' (the COCO json of '{split}')")
    elif data.format == "crowdhuman":
        annotation_keys = {k: v if v is not None else f"annotation_{k}.odgt" for k, v in annotation_keys.items()}
    elif any(v is not None for v in annotation_keys.values()):
        raise DataError(
            f"{where}: format yolo reads labels/<split>/*.txt next to images/<split> — remove "
            "'train_annotations'/'val_annotations'"
        )
    return annotation_keys


def _split_paths(data: DataYaml, root: Path, annotation_keys: dict, where: str) -> dict[str, Path]:
    """'train', 'val' (image folders) and '<split>_annotations' (a file, or yolo's labels folder) under `root`."""
    paths = {"train": root / data.train, "val": root / data.val}
    for split in ("train", "val"):
        if data.format == "yolo":
            try:
                paths[f"{split}_annotations"] = labels_dir_for(paths[split])
            except ValueError as e:
                raise DataError(f"{where}: '{split}': {e}") from e
        else:
            paths[f"{split}_annotations"] = root / annotation_keys[split]
    return paths


def _check_present(data: DataYaml, paths: dict[str, Path], require: tuple[Split, ...], root: Path, where: str) -> None:
    for split in require:
        checks = [(split, Path.is_dir)]
        if data.format != "yolo":  # a YOLO split may have no labels at all (background images)
            checks.append((f"{split}_annotations", Path.is_file))
        for key, is_ok in checks:
            if not is_ok(paths[key]):
                raise FileNotFoundError(
                    f"{where}: '{key}' path {paths[key]} does not exist — {_download_hint(data)} into {root}, "
                    f"or fix '{key}:'"
                )


def _names_from_annotations(data: DataYaml, paths: dict[str, Path], where: str) -> list[str]:
    """Class names where the YAML gives none: CrowdHuman's one, or the categories of a COCO json."""
    if data.format == "crowdhuman":
        return ["person"]
    found = [paths[key] for key in ("val_annotations", "train_annotations") if paths[key].is_file()]
    if not found:
        raise DataError(f"{where}: no 'names' and no annotation file to read the categories from — add 'names:'")
    return category_names(found[0])


def _check_names(data: DataYaml, where: str) -> list[str] | None:
    """'names' as a list (a dict must have the keys 0..C-1); required for yolo."""
    if data.names is None:
        if data.format == "yolo":
            raise DataError(f"{where}: format yolo needs 'names:' — the class names, in label-id order")
        return None
    names = data.names
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{where}: 'names' as a dict must have the keys 0..{len(names) - 1}, got {sorted(names, key=str)}")
        names = [names[k] for k in range(len(names))]
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: 'names' must be a non-empty list of class names (strings)")
    if data.format == "crowdhuman" and len(names) != 1:
        raise DataError(f"{where}: CrowdHuman has one class — use names: [person]")
    return list(names)
