"""The lab pieces the proxy story adds: the proxy's command line, QEMU's reconnect option."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from vhostcompat.errors import InputError
from vhostcompat.lab.commands import ProxyConfig, ProxyLaunch, ProxyMode, proxy_argv, run_proxy
from vhostcompat.lab.qemu import QemuPaths, QemuVm, qemu_argv


def test_proxy_argv_runs_this_python_with_every_option() -> None:
    mode = ProxyMode("v1", catalogs=(Path("/t/c.toml"),), db="/t/host", iface="vhu0")
    config = ProxyConfig(frontend="/t/a.sock:client", backend="/t/b.sock:server",
                         status_file=Path("/t/s.json"), mode=mode,
                         reply_timeout=0.5, backend_timeout=3, debug=True)
    assert proxy_argv(config) == [
        sys.executable, "-m", "vhostcompat.cli", "-vv", "proxy",
        "--frontend", "/t/a.sock:client", "--backend", "/t/b.sock:server",
        "--status-file", "/t/s.json", "--profile", "v1", "--catalog", "/t/c.toml",
        "--db", "/t/host", "--iface", "vhu0", "--reply-timeout", "0.5",
        "--backend-timeout", "3"]
    minimal = ProxyConfig(frontend="/t/a.sock", backend="/t/b.sock",
                          status_file=Path("/t/s.json"), mode=ProxyMode(db="/t/host", iface="vhu0"))
    assert "--profile" not in proxy_argv(minimal) and "-vv" not in proxy_argv(minimal)


def test_a_proxy_mode_is_a_profile_or_a_store_and_interface() -> None:
    assert ProxyMode("v1").argv() == ["--profile", "v1"]
    assert ProxyMode(db="/t/host", iface="vhu0").argv() == ["--db", "/t/host", "--iface", "vhu0"]
    with pytest.raises(InputError, match="needs a profile"):
        ProxyMode()
    with pytest.raises(InputError, match="go together"):
        ProxyMode("v1", db="/t/host")
    with pytest.raises(InputError, match="go together"):
        ProxyMode("v1", iface="vhu0")


def test_a_proxy_launch_adds_a_source_tree_and_cpus(short_dir: Path) -> None:
    """Benchmarks run a proxy from another tree (PYTHONPATH) or on given CPUs only."""
    assert ProxyLaunch().environment() is None
    assert ProxyLaunch(source=Path("/t/src")).environment() == {"PYTHONPATH": "/t/src"}
    with pytest.raises(InputError, match="CPU numbers"):
        ProxyLaunch(cpus=frozenset())
    launch = ProxyLaunch(cpus=frozenset({0}))
    config = ProxyConfig(frontend=str(short_dir / "f.sock"), backend=str(short_dir / "b.sock"),
                         status_file=short_dir / "s.json",
                         mode=ProxyMode("debian12.dpdk-vhost.v22.11", launch=launch))
    assert proxy_argv(config) == proxy_argv(
        ProxyConfig(config.frontend, config.backend, config.status_file,
                    ProxyMode("debian12.dpdk-vhost.v22.11")))  # the command line is the same

    async def scenario() -> None:
        async with run_proxy(config, short_dir) as proxy:
            assert os.sched_getaffinity(proxy.process.pid) == {0}

    asyncio.run(scenario())


def test_qemu_reconnect_goes_on_the_client_chardev(tmp_path: Path) -> None:
    paths = QemuPaths.in_directory(tmp_path, "q")
    argv = qemu_argv(QemuVm(tmp_path / "a.sock", reconnect=1), paths)
    assert argv[argv.index("-chardev") + 1] == f"socket,id=c0,path={tmp_path}/a.sock,reconnect=1"
    plain = qemu_argv(QemuVm(tmp_path / "a.sock"), paths)
    assert plain[plain.index("-chardev") + 1] == f"socket,id=c0,path={tmp_path}/a.sock"
    with pytest.raises(InputError, match="reconnect needs QEMU as the socket's client"):
        QemuVm(tmp_path / "a.sock", chardev_server=True, reconnect=1)
    with pytest.raises(InputError):
        QemuVm(tmp_path / "a.sock", reconnect=0)
