"""``vhostcompat proxy`` and ``vhostcompat proxy-status``: in-process and as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.ovsdb.helpers import add_vhost_port, require_ovsdb
from tests.proxy.fakes import NARROW, WAIT, F, FakeBackend, FakeFrontend
from vhostcompat.hoststore import open_host
from vhostcompat.lab.commands import ProxyConfig, ProxyMode, run_proxy
from vhostcompat.lab.ovsdb import run_ovsdb_server
from vhostcompat.lab.process import wait_until
from vhostcompat.proxy import ProxyState, ProxyStatus, StatusFile
from vhostcompat.transport import connect, listen

pytestmark = pytest.mark.timeout(60)

CATALOG = """
[[profile]]
version = "test.narrow"
virtio_features = "{features:#x}"
protocol_features = "{protocol:#x}"
max_queue_pairs = 2
max_ring_size = 256
"""



@pytest.fixture
def catalog(short_dir: Path) -> Path:
    assert NARROW.protocol_features is not None
    path = short_dir / "narrow.toml"
    path.write_text(CATALOG.format(features=int(NARROW.virtio_features),
                                   protocol=int(NARROW.protocol_features)))
    return path


@pytest.mark.parametrize("kind", ["regular", "symlink"])
def test_proxy_refuses_a_frontend_path_that_is_not_a_socket(
        capsys: pytest.CaptureFixture[str], short_dir: Path, catalog: Path, kind: str) -> None:
    bad = short_dir / "vhu0.sock"
    if kind == "regular":
        bad.write_text("data")
    else:
        bad.symlink_to("/etc/passwd")
    status, out, err = run_cli(capsys, "proxy", "--profile", "test.narrow", "--catalog",
                           str(catalog), "--frontend", str(bad), "--backend",
                           str(short_dir / "be.sock"), "--status-file",
                           str(short_dir / "s.json"))
    assert status == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("vhostcompat: socket path")]
    assert lines == [f"vhostcompat: socket path {bad}: "
                     + ("exists and is not a socket" if kind == "regular"
                        else "is a symbolic link; refusing it")]
    written = json.loads((short_dir / "s.json").read_text())
    assert written["state"] == "failed" and str(bad) in written["detail"]


@pytest.mark.parametrize(("argv", "complaint"), [
    ([], "the mode is needed"),
    (["--profile", "no.such.version"], "unknown version 'no.such.version'"),
    (["--db", "/tmp"], "--db and --iface go together"),
    (["--profile", "test.narrow", "--reply-timeout", "0"], "reply-timeout must be a positive"),
])
def test_proxy_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                               short_dir: Path, catalog: Path,
                                               argv: list[str], complaint: str) -> None:
    status, _, err = run_cli(capsys, "proxy", "--catalog", str(catalog), "--frontend",
                         str(short_dir / "f.sock"), "--backend", str(short_dir / "b.sock"),
                         *argv)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and complaint in err


def test_proxy_needs_an_assigned_interface(capsys: pytest.CaptureFixture[str],
                                           short_dir: Path, catalog: Path) -> None:
    host = str(short_dir / "host")
    assert run_cli(capsys, "publish", "--db", host, "--catalog", str(catalog))[0] == 0
    status, _, err = run_cli(capsys, "proxy", "--db", host, "--iface", "vhu0", "--frontend",
                         str(short_dir / "f.sock"), "--backend", str(short_dir / "b.sock"))
    assert status == 2 and "no interface 'vhu0'" in err


def test_proxy_refuses_a_profile_other_than_the_interface_assigned_one(
        capsys: pytest.CaptureFixture[str], short_dir: Path, catalog: Path) -> None:
    other = short_dir / "other.toml"
    other.write_text(catalog.read_text().replace("test.narrow", "test.other"))
    host = str(short_dir / "host")
    both = ["--catalog", str(catalog), "--catalog", str(other)]
    assert run_cli(capsys, "publish", "--db", host, *both)[0] == 0
    assert run_cli(capsys, "assign", "--db", host, "--iface", "vhu0", "--version",
               "test.narrow")[0] == 0
    status, _, err = run_cli(capsys, "proxy", "--profile", "test.other", *both, "--db", host,
                         "--iface", "vhu0", "--frontend", str(short_dir / "f.sock"),
                         "--backend", str(short_dir / "b.sock"))
    assert status == 2
    assert "interface vhu0 is assigned test.narrow, not test.other" in err
    assert not (short_dir / "f.sock").exists()


def _write_status(path: Path, state: ProxyState) -> None:
    asyncio.run(StatusFile(path).publish(ProxyStatus("test.narrow", state, interface="vhu0")))


@pytest.mark.parametrize(("state", "expected"), [
    (ProxyState.RUNNING, 0), (ProxyState.BACKEND_LOST, 0), (ProxyState.REFUSED, 1),
    (ProxyState.FAILED, 1)])
def test_proxy_status_exit_says_whether_the_interface_is_in_its_mode(
        capsys: pytest.CaptureFixture[str], short_dir: Path, state: ProxyState,
        expected: int) -> None:
    path = short_dir / "s.json"
    _write_status(path, state)
    status, out, _ = run_cli(capsys, "proxy-status", str(path))
    assert status == expected
    assert out.startswith(f"interface vhu0: mode test.narrow, {state.value}")
    status, out, _ = run_cli(capsys, "proxy-status", str(path), "--json")
    assert status == expected and json.loads(out)["state"] == state.value


def test_proxy_status_of_a_missing_or_corrupt_file_is_exit_2(
        capsys: pytest.CaptureFixture[str], short_dir: Path) -> None:
    status, _, err = run_cli(capsys, "proxy-status", str(short_dir / "none.json"))
    assert status == 2 and "no such file" in err
    (short_dir / "bad.json").write_text('{"state": 3}')
    status, _, err = run_cli(capsys, "proxy-status", str(short_dir / "bad.json"))
    assert status == 2 and "bad.json" in err


@contextlib.asynccontextmanager
async def host_store(kind: str, short_dir: Path) -> AsyncIterator[str]:
    """A host address: an embedded store, or a real ovsdb-server with port vhu0."""
    if kind == "embedded":
        yield str(short_dir / "host")
        return
    require_ovsdb()
    async with run_ovsdb_server(short_dir, "db") as server:
        await add_vhost_port(server)
        yield server.remote


@pytest.mark.parametrize("kind", ["embedded", "ovsdb"])
def test_the_proxy_process_relays_records_in_the_host_store_and_stops_on_sigterm(
        short_dir: Path, catalog: Path, kind: str) -> None:
    """The CLI as deployed: mode read from the host store, negotiated state written back."""
    frontend_path, backend_path = short_dir / "vhu0.sock", short_dir / "be.sock"
    status_file = short_dir / "vhu0.json"

    async def scenario() -> None:
        async with host_store(kind, short_dir) as host:
            await proxy_story(host)

    async def proxy_story(host: str) -> None:
        async with open_host(host) as store:
            await store.publish([NARROW])
            await store.assign("vhu0", NARROW.version)
        backend = FakeBackend()
        config = ProxyConfig(frontend=str(frontend_path), backend=str(backend_path),
                             status_file=status_file, mode=ProxyMode(db=host, iface="vhu0"))
        async with await listen(backend_path, backend.serve), \
                run_proxy(config, short_dir, "proxy") as proxy:
            frontend = FakeFrontend(await connect(frontend_path, retry_for=WAIT))
            await frontend.handshake()
            await frontend.start_ring(0)
            await frontend.start_ring(1)
            await frontend.sync()
            running = await proxy.wait_for_state(ProxyState.RUNNING, WAIT)
            assert running.interface == "vhu0" and running.profile == "test.narrow"
            assert F.VIRTIO_NET_F_HOST_TSO4 not in (running.offered_features or F(0))

            async def recorded() -> bool:
                async with open_host(host) as store:
                    record = (await store.read()).interface("vhu0")
                return record.negotiated.status == "running"

            await wait_until(recorded, WAIT, "the host store to record the interface running",
                             watch=[proxy.process])
            async with open_host(host) as store:
                negotiated = (await store.read()).interface("vhu0").negotiated
            assert negotiated.acked_features == running.acked_features
            assert (negotiated.queue_pairs, negotiated.ring_size) == (1, 256)
            frontend.close()
            assert await proxy.process.stop() == 0  # SIGTERM: a clean exit
        final = ProxyStatus.from_json(json.loads(status_file.read_text()))
        assert final.state is ProxyState.EXITED
        log = (short_dir / "proxy.log").read_text()
        assert "GET_FEATURES: back-end 0xd7c66ffcb, mode test.narrow" in log
        assert not frontend_path.exists()

    asyncio.run(scenario())
