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
    _check_xdist_groups(config)


def _check_xdist_groups(config):
    """Refuse ``--dist loadgroup`` where pytest-xdist cannot group tests (pytest 9 with pytest-xdist ≤ 3.8).

    xdist groups the tests marked ``xdist_group`` by appending ``@<group>`` to their ids, and pytest 9 ignores
    that renaming: every group would be spread over the workers, and its module fixtures computed on each.
    """
    if hasattr(config, "workerinput") or config.getoption("dist", default="no") != "loadgroup":
        return
    from importlib.metadata import version
    xdist = tuple(int(p) for p in version("pytest-xdist").split(".")[:3] if p.isdigit())
    if int(pytest.__version__.split(".")[0]) >= 9 and xdist <= (3, 8, 0):
        raise pytest.UsageError(f"--dist loadgroup does not group tests with pytest {pytest.__version__} and "
                                f"pytest-xdist {version('pytest-xdist')}: install the test extra's pins "
                                "(pip install -e '.[test]')")
