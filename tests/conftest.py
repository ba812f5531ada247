"""Fixtures for every test directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards.

    Short because Unix socket paths are limited to 107 bytes, and pytest's
    ``tmp_path`` can be longer.
    """
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
