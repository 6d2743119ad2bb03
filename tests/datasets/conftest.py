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
