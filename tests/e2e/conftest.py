"""Fixtures shared by the end-to-end tests with real QEMU, DPDK and ovsdb-server."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def lab_dir(short_dir: Path) -> Path:
    """The run directory of a lab scenario: fresh, and short for its Unix sockets."""
    return short_dir
