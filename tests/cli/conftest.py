"""Fixtures for the CLI tests: a CLI runner and hosts published from the shipped catalogs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vhostcompat.cli import main
from vhostcompat.profiles.catalog import SYSTEM_CATALOG_ENV

V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture(autouse=True)
def no_system_catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's /etc/vhostcompat out of these tests."""
    monkeypatch.setenv(SYSTEM_CATALOG_ENV, str(tmp_path / "no-such-system-dir"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``vhostcompat ARGS...`` in-process; SystemExit (argparse) counts as a status."""

    def invoke(*argv: str) -> Result:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 2
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return invoke


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
