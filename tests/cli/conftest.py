"""Fixtures for the CLI tests: a CLI runner and hosts published from the shipped catalogs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import CliResult, run_cli
from vhostcompat.profiles.catalog import SYSTEM_CATALOG_ENV

V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"

Cli = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def no_system_catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's /etc/vhostcompat out of these tests."""
    monkeypatch.setenv(SYSTEM_CATALOG_ENV, str(tmp_path / "no-such-system-dir"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``vhostcompat ARGS...`` run in-process (:func:`tests.helpers.run_cli`)."""
    return functools.partial(run_cli, capsys)


@pytest.fixture
def two_hosts(cli: Cli, tmp_path: Path) -> tuple[str, str]:
    """host-a: every shipped version; host-b: only upstream.ovs-dpdk.v2.6."""
    host_a, host_b = str(tmp_path / "host-a"), str(tmp_path / "host-b")
    assert cli("publish", "--db", host_a).status == 0
    assert cli("publish", "--db", host_b, "--only", V26).status == 0
    return host_a, host_b


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to prove nothing changed on disk."""
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}
