"""lab.libvirt without a daemon: config files, the namespace script, the cache, domain XML."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import run_bounded
from vhostcompat.lab import libvirt
from vhostcompat.lab.libvirt import (
    CapabilityCache,
    LibvirtError,
    LibvirtHost,
    TcgDomain,
    VhostUserInterface,
)


def test_qemu_conf_runs_qemu_as_root_without_confinement() -> None:
    lines = libvirt.qemu_conf(50000).splitlines()
    for expected in ('user = "root"', 'group = "root"', "dynamic_ownership = 0",
                     "remember_owner = 0", 'security_driver = "none"', "namespaces = [ ]",
                     "cgroup_controllers = [ ]", "migration_port_min = 50000",
                     "migration_port_max = 50001"):
        assert expected in lines
    assert not any(line.startswith(("migration_host", "migration_address")) for line in lines)


def test_libvirtd_conf_has_its_own_host_uuid_and_no_auth() -> None:
    text = libvirt.libvirtd_conf("8d0e4e3c-0000-4000-8000-000000000001")
    assert 'host_uuid = "8d0e4e3c-0000-4000-8000-000000000001"' in text
    for expected in ('unix_sock_rw_perms = "0770"', 'auth_unix_ro = "none"',
                     'auth_unix_rw = "none"'):
        assert expected in text


def test_the_namespace_script_bind_mounts_every_fixed_path(tmp_path: Path) -> None:
    host = LibvirtHost("a b", tmp_path / "with space")
    words = shlex.split(libvirt.namespace_script(host).replace(";", " ;"))
    for part, inside in libvirt.MOUNTS:
        assert ["mount", "--bind", str(host.part(part)), inside] == \
            words[words.index(inside) - 3:words.index(inside) + 1]
    assert words[-4:] == ["exec", "virtlogd", "-p", str(host.virtlogd_pidfile)]
    assert libvirt.virtlogd_argv(host)[:5] == ["unshare", "-m", "--propagation", "private",
                                               "--"]
    assert host.uri == f"qemu+unix:///system?socket={host.root}/run/libvirt-sock"


def test_prepare_copies_the_machines_files_and_writes_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc, lib = tmp_path / "system-etc", tmp_path / "system-lib"
    (etc / "nwfilter").mkdir(parents=True)
    (etc / "nwfilter" / "clean.xml").write_text("<filter/>")
    (etc / "qemu.conf").write_text("# the machine's\n")
    (lib / "qemu").mkdir(parents=True)
    monkeypatch.setattr(libvirt, "SYSTEM_ETC", etc)
    monkeypatch.setattr(libvirt, "SYSTEM_LIB", lib)
    host = LibvirtHost("a", tmp_path / "a")
    libvirt.prepare_host(host)
    assert (host.etc / "nwfilter" / "clean.xml").read_text() == "<filter/>"
    assert 'security_driver = "none"' in (host.etc / "qemu.conf").read_text()
    assert (etc / "qemu.conf").read_text() == "# the machine's\n"
    assert host.hooks_dir.is_dir() and host.vhost_user_dir.is_dir()
    assert (host.root / "lib" / "qemu").is_dir()
    with pytest.raises(LibvirtError, match="not empty"):
        libvirt.prepare_host(host)


def test_the_capability_cache_fills_once_and_seeds_every_daemon(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "cache")
    first, second = tmp_path / "first", tmp_path / "second"
    assert cache.seed(first) == 0
    (first / "abc.xml").write_text("<qemuCaps/>")
    cache.keep(first)
    (first / "abc.xml").write_text("<changed/>")
    cache.keep(first)  # already filled: kept as first probed
    assert cache.seed(second) == 1
    assert (second / "abc.xml").read_text() == "<qemuCaps/>"


def test_a_tcg_domain_has_what_vhost_user_needs_and_nothing_else() -> None:
    metadata = ET.Element("{urn:example}note")
    domain = TcgDomain("vm1", (VhostUserInterface("52:54:00:00:00:01", Path("/run/x/vhu0")),),
                       metadata=(metadata,))
    root = ET.fromstring(domain.to_xml())
    assert root.get("type") == "qemu"
    assert root.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert root.find("memoryBacking/source").get("type") == "memfd"  # type: ignore[union-attr]
    assert root.find("memoryBacking/access").get("mode") == "shared"  # type: ignore[union-attr]
    assert root.find("metadata/{urn:example}note") is not None
    interface = root.find("devices/interface")
    assert interface is not None and interface.get("type") == "vhostuser"
    source = interface.find("source")
    assert source is not None and source.attrib == {"type": "unix", "path": "/run/x/vhu0",
                                                    "mode": "client"}
    assert interface.find("rom").get("enabled") == "no"  # type: ignore[union-attr]
    assert root.find("devices/disk") is None and root.find("devices/graphics") is None
    with_rom = ET.fromstring(TcgDomain("vm2", domain.interfaces, option_rom=True).to_xml())
    assert with_rom.find("devices/interface/rom") is None


def test_a_qemu_libvirtd_left_behind_is_stopped_by_its_pidfile(tmp_path: Path) -> None:
    host = LibvirtHost("a", tmp_path)
    (host.run / "qemu").mkdir(parents=True)
    # A stand-in QEMU (by its name), and a stale pidfile naming a process that is not one.
    qemu = subprocess.Popen(["bash", "-c", "exec -a qemu-system-x86_64 sleep 60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        wait = time.monotonic() + 10
        while not libvirt._is_qemu(qemu.pid):  # bash has exec'd it
            assert time.monotonic() < wait
            time.sleep(0.01)
        (host.run / "qemu" / "vm1.pid").write_text(f"{qemu.pid}\n")
        (host.run / "qemu" / "vm2.pid").write_text(f"{other.pid}\n")
        run_bounded(libvirt.kill_leftover_qemus(host, timeout=10))
        assert qemu.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for process in (qemu, other):
            process.kill()
            process.wait()
