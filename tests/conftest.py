"""Shared fixtures. Nothing here downloads: data is generated into tmp_path."""

import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated datasets out of the user's ~/.cache; one cache for the whole session."""
    if "OTADET_CACHE" not in os.environ:
        monkeypatch.setenv("OTADET_CACHE", str(tmp_path_factory.getbasetemp() / "otadet-cache"))
