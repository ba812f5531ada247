"""Shared test helpers.

``require_tool`` is how a test says it needs a real component: outside CI a
missing tool skips the test; under ``CI=true`` it fails it, because the tests
that prove end-to-end claims must run there. ``run_cli`` runs the
``vhostcompat`` command in-process and returns what it said.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable
from typing import NamedTuple, TypeVar

import pytest

from vhostcompat.cli import main


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def require_tool(*commands: str) -> None:
    """Skip (locally) or fail (under CI=true) unless every command is on PATH.

    A command may be a path (QEMU 10's wrapper): it must then be executable.
    """
    missing = [command for command in commands if shutil.which(command) is None]
    if missing:
        _missing(f"missing tool(s): {', '.join(missing)} (scripts/setup.sh installs them "
                 "as root)")


def require_root() -> None:
    """Skip (locally) or fail (under CI=true) unless root (tap devices need CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        _missing("not root: tap devices need CAP_NET_ADMIN")


class CliResult(NamedTuple):
    status: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> CliResult:
    """Run ``vhostcompat ARGS...`` in-process; SystemExit (argparse) counts as a status."""
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return CliResult(status, captured.out, captured.err)


def open_fd_count() -> int:
    """How many fds this process has open right now (for leak checks)."""
    return len(os.listdir("/proc/self/fd"))


T = TypeVar("T")

SCENARIO_TIMEOUT = 60.0


def run_bounded(coroutine: Awaitable[T], timeout: float = SCENARIO_TIMEOUT) -> T:
    """Run one asyncio scenario to its end, or fail it after ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coroutine

    return asyncio.run(bounded())


async def run_cli_process(*argv: str, timeout: float = 60.0) -> CliResult:
    """``vhostcompat ARGS...`` as its own process (for tests inside an event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vhostcompat.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None  # communicate() waited for the exit
    return CliResult(process.returncode, out.decode(), err.decode())
