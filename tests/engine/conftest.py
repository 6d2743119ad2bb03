"""Fixtures for the training tests: a very small generated split and run settings that train in seconds."""

import pytest
import torch


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, write_data_yaml):
    """A data YAML for an 8-train / 2-val split of the built-in generator, all images 128x96."""
    root = tmp_path_factory.mktemp("train-data")
    generate = {"seed": 7, "num_train": 8, "num_val": 2, "width": [128, 128], "height": [96, 96], "objects": [3, 6]}
    return write_data_yaml(root / "tiny.yaml", path=root / "shapes-128", builtin="shapes", generate=generate)


@pytest.fixture
def restore_determinism():
    """run_training(deterministic=True) switches torch's global flag on; put it back after the test."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)
