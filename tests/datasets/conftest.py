"""Fixtures for the dataset tests: a small generated shapes dataset and the package log."""

import logging

import pytest

from otadet.datasets.shapes import generate_shapes
from otadet.utils.log import LOGGER


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """40 training + 4 validation images of the built-in dataset, seed 0."""
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes", seed=0, num_train=40, num_val=4)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def otadet_log():
    """Messages sent to the otadet LOGGER during the test (it does not propagate to caplog)."""
    handler = _Records()
    LOGGER.addHandler(handler)
    yield handler.messages
    LOGGER.removeHandler(handler)


@pytest.fixture(scope="session")
def shapes_formats(tmp_path_factory):
    """Data YAMLs of one small generated shapes dataset in all three formats: {'coco'|'crowdhuman'|'yolo': yaml}.

    The CrowdHuman and YOLO files are written on first use by `load_data`, as for the shipped YAMLs.
    """
    import yaml

    from otadet.datasets.data_yaml import load_data

    tmp = tmp_path_factory.mktemp("formats")
    common = {"builtin": "shapes", "path": str(tmp / "shapes"), "generate": {"seed": 2, "num_train": 8, "num_val": 4},
              "train": "images/train", "val": "images/val"}  # fmt: skip
    specs = {
        "coco": {"format": "coco", "train_annotations": "annotations/train.json", "val_annotations": "annotations/val.json"},
        "crowdhuman": {"format": "crowdhuman", "train_annotations": "crowdhuman/annotation_train.odgt",
                       "val_annotations": "crowdhuman/annotation_val.odgt", "names": ["person"]},  # fmt: skip
        "yolo": {"format": "yolo", "names": {0: "circle", 1: "rectangle", 2: "triangle", 3: "cross"}},
    }
    out = {}
    for name, extra in specs.items():
        out[name] = tmp / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump({**common, **extra}))
        load_data(out[name])  # generates on first use
    return out
