"""Shared fixtures: float64 defaults for reference comparisons and the offline data root."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def find_data_root() -> pathlib.Path | None:
    """``$LAMDA_DATA_ROOT``, else ``../shared/data`` beside the repository; None when neither exists."""
    for cand in (os.environ.get("LAMDA_DATA_ROOT"), REPO.parent / "shared" / "data"):
        if cand and pathlib.Path(cand).is_dir():
            return pathlib.Path(cand)
    return None


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
    root = find_data_root()
    if root is None:
        pytest.skip("offline data not found: set LAMDA_DATA_ROOT or place shared/data beside the repository")
    return root


def pytest_configure(config):
    # the tests run small tensors: one intra-op thread avoids oversubscribing cores that other processes share,
    # and costs little on an idle machine
    torch.set_num_threads(1)
