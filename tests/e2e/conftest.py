"""Fixtures shared by the end-to-end tests with real QEMU, DPDK and ovsdb-server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """A fresh run directory, short because unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
