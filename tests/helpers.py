"""Shared test helpers.

``require_tool`` is how a test says it needs a real component: outside CI a
missing tool skips the test; under ``CI=true`` it fails it, because the tests
that prove end-to-end claims must run there.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(*commands: str) -> None:
    """Skip (locally) or fail (under CI=true) unless every command is on PATH."""
    missing = [command for command in commands if shutil.which(command) is None]
    if not missing:
        return
    message = f"missing tool(s): {', '.join(missing)} (scripts/setup.sh installs them as root)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)
