"""Test settings: CPU, no network, no experiment tracking; the repository root is importable."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process: the suite runs as two workers on two cores, and the launchers' subprocesses inherit this.
# Two threads per worker made small operations wait on each other (a test of 1 s took 40).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "launches: the file runs whole launchers or several training processes "
                                       "(minutes); such files are scheduled first")


def pytest_collection_modifyitems(items):
    """Files marked `launches` run first. The suite's two workers take whole files in collection order, so the long
    files start early and the short ones fill the end: both workers finish close together."""
    items.sort(key=lambda item: item.get_closest_marker("launches") is None)
