"""Gathering: bounded concurrency, a timeout per host, failures kept, bad input refused.

A host that accepts and never answers (a Unix socket server of the test's
own) is reported "no answer within T s" while the others answer; at most
``concurrency`` hosts are asked at once (counted at the listeners).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, snapshot
from tests.cli.test_bad_input import assert_one_line_error
from tests.manager.helpers import BIG, IFACE, SMALL, publish_modes, run, write_catalog
from vhostcompat import manager
from vhostcompat.cli import fanout
from vhostcompat.errors import InputError
from vhostcompat.hoststore import LOCK_FILE


@contextlib.asynccontextmanager
async def silent_hosts(directory: Path, count: int) -> AsyncIterator[tuple[list[str], list[int]]]:
    """``count`` Unix sockets that accept and never answer; the most open at once."""
    active, peak = [0], [0]
    servers = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            await reader.read()  # until the client gives up
        finally:
            active[0] -= 1
            writer.close()

    addresses = []
    for index in range(count):
        path = directory / f"silent-{index}.sock"
        servers.append(await asyncio.start_unix_server(serve, str(path)))
        addresses.append(f"unix:{path}")
    try:
        yield addresses, peak
    finally:
        for server in servers:
            server.close()


def test_a_silent_host_times_out_and_the_others_answer(short_dir: Path) -> None:
    catalog = write_catalog(short_dir)
    good = str(short_dir / "good")
    run(publish_modes(catalog, {good: [SMALL]}))

    async def scenario() -> None:
        async with silent_hosts(short_dir, 6) as (silent, peak):
            report = await manager.versions(
                [good, *silent], records=manager.HostStores(concurrency=2, timeout=0.3))
            assert [host.address for host in report.hosts] == [good]
            assert [failure.address for failure in report.failures] == silent
            assert all(failure.reason == f"host {failure.address}: no answer within 0.3 s"
                       for failure in report.failures)
            assert peak[0] == 2
            with pytest.raises(manager.FleetError, match="select: 6 host"):
                await manager.select([good, *silent],
                                     records=manager.HostStores(timeout=0.3))

    run(scenario())


def test_the_cycle_collector_is_off_only_while_hosts_are_asked(short_dir: Path) -> None:
    catalog = write_catalog(short_dir)
    hosts = [str(short_dir / f"host{index}") for index in range(3)]
    run(publish_modes(catalog, {host: [SMALL] for host in hosts}))
    seen: list[bool] = []

    def progress(address: str, done: int, total: int) -> None:
        seen.append(gc.isenabled())

    assert gc.isenabled()
    report = run(manager.versions(hosts, progress=progress))
    assert len(report.hosts) == 3 and seen == [False] * 3
    assert gc.isenabled()
    gc.disable()
    try:
        run(manager.versions(hosts))
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()


def test_bad_options_and_addresses_are_refused_before_asking() -> None:
    for options in ({"concurrency": 0}, {"timeout": 0.0}, {"timeout": -1.0}):
        with pytest.raises(InputError):
            manager.HostStores(**options)
    with pytest.raises(InputError, match="host a is listed twice"):
        manager.check_addresses(["a", "b", "a"])
    with pytest.raises(InputError, match="no hosts"):
        manager.check_addresses([])


def test_bad_input_on_the_command_line(cli: Cli, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run(publish_modes(catalog, {a: [BIG, SMALL], b: [SMALL]}))
    before = snapshot(tmp_path)
    for argv, says in [
        (["select", a, b, a], f"host {a} is listed twice"),
        (["provision", a, b, b, "--iface", IFACE], f"host {b} is listed twice"),
        (["select", a, b, "--prefer", "test.nope"], "unknown version 'test.nope'"),
        (["provision", a, b, "--iface", IFACE, "--prefer", "test.nope"], "unknown version"),
        (["matrix", a, b, "--version", "test.nope"], "unknown version 'test.nope'"),
        (["matrix", a, b, "--version", "not a version"], "invalid version string"),
        (["targets", "--iface", IFACE, "--from", a, a], "both the source and a candidate"),
        (["provision", a, b, "--iface", IFACE, "--strict"], "--strict goes with"),
        (["versions", a, "--concurrency", "0"], "concurrency must be"),
        (["provision", a, "--iface", IFACE, "--for-migration", a], "both the source"),
    ]:
        result = cli(*argv)
        assert result.status == 2, (argv, result)
        assert_one_line_error(result.stderr, says)
    assert snapshot(tmp_path) == before


def test_an_unreachable_host_is_listed_on_stderr_and_never_compatible(
        cli: Cli, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path)
    a, gone = str(tmp_path / "a"), str(tmp_path / "gone")
    run(publish_modes(catalog, {a: [SMALL]}))
    result = cli("versions", a, gone, "--json")
    assert result.status == 2
    assert json.loads(result.stdout)["unreachable"][0]["host"] == gone
    assert_one_line_error(result.stderr, f"host {gone}: no such host store")
    assert cli("select", a, gone).status == 2


def test_the_progress_bar_only_on_a_terminal_and_never_with_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert fanout.wants_progress(argparse.Namespace(json=False))
    assert not fanout.wants_progress(argparse.Namespace(json=True))
    with fanout.progress_bar(argparse.Namespace(json=False), "select") as advance:
        assert advance is not None
        advance("host-a", 1, 2)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with fanout.progress_bar(argparse.Namespace(json=False), "select") as advance:
        assert advance is None


def test_a_host_that_times_out_while_written_leaves_nothing_half_written(
        cli: Cli, tmp_path: Path) -> None:
    """Host b's store is locked by another writer: its write times out (exit 2, one line);
    the hosts written before it are restored, so every store is as it was."""
    catalog = write_catalog(tmp_path)
    a, b, c = (str(tmp_path / name) for name in "abc")
    run(publish_modes(catalog, {a: [BIG, SMALL], b: [SMALL], c: [SMALL]}))
    run(manager.assign(c, IFACE, SMALL))
    before = snapshot(tmp_path)
    lock = os.open(Path(b) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cli("provision", a, b, c, "--iface", IFACE, "--timeout", "1")
    finally:
        os.close(lock)
    assert result.status == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, f"provision {IFACE}: host {b}: no answer within 1 s",
                          "restored 2 host(s) written before")
    assert snapshot(tmp_path) == before
