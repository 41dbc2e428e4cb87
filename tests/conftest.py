"""Shared fixtures: where the real images live, and how a missing copy is handled.

Tests that need real photographs read them from ``$SSLBENCH_DATA`` or ``../shared/data`` beside the repository.
In CI (``CI`` set) a missing copy is a failure; elsewhere the test is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_root() -> Path:
    env = os.environ.get("SSLBENCH_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real image data (``cifar10/``, ``camvid/``)."""
    root = _shared_data_root()
    if not (root / "cifar10").is_dir() or not (root / "camvid").is_dir():
        message = (
            f"real image data not found at {root} (expected cifar10/ and camvid/ there); "
            "set SSLBENCH_DATA to its location"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's torch work on one intra-op thread, restoring the count after: its ops are small, and on a busy
    machine a second thread that is not scheduled stalls every parallel region (measured tens of times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
