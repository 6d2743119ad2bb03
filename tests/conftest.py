"""Shared fixtures. Nothing here downloads: data is generated into tmp_path."""

import logging
import os
import signal

import yaml

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated datasets out of the user's ~/.cache; one cache for the whole session."""
    if "OTADET_CACHE" not in os.environ:
        monkeypatch.setenv("OTADET_CACHE", str(tmp_path_factory.getbasetemp() / "otadet-cache"))


def _write_data_yaml(file, *, path, **extra):
    """A COCO-format data YAML with the built-in generator's folder layout, at `file`."""
    spec = {
        "format": "coco",
        "path": str(path),
        "train": "images/train",
        "val": "images/val",
        "train_annotations": "annotations/train.json",
        "val_annotations": "annotations/val.json",
        **extra,
    }
    file.write_text(yaml.safe_dump(spec))
    return file


@pytest.fixture(scope="session")
def write_data_yaml():
    """write_data_yaml(file, path=..., **extra_keys) -> file."""
    return _write_data_yaml


@pytest.fixture
def log_messages():
    """Every message otadet's logger emits during the test, in order."""
    from otadet.utils.log import LOGGER

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    yield messages
    LOGGER.removeHandler(handler)


@pytest.fixture
def hang_guard():
    """A hang is a failure: SIGALRM raises TimeoutError after 60 s."""

    def hung(*_):
        raise TimeoutError("hung for 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
