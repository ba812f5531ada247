"""Fixtures for the backend tests: the CLI runner of tests/cli, short socket directories."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import cli, no_system_catalog

__all__ = ["cli", "no_system_catalog", "short_dir"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vcb-", dir="/tmp"))
    yield path
    shutil.rmtree(path)
