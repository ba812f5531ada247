"""The libvirt hook with real libvirtd daemons, QEMU, DPDK testpmd and the proxy.

Two lab hosts on one machine, each its own libvirtd (private mount
namespace), its own embedded host store and its own vhost-user backend: DPDK
testpmd behind ``vhostcompat proxy`` in the interface's mode, listening on
``/run/libvirt/vhost-user/vhu0-proxy.sock`` as each host's QEMU sees it.
Host A runs testpmd ``tso=1`` and publishes both DPDK versions; host B runs
the default testpmd and publishes only ``debian12.dpdk-vhost.v22.11``. Our
hook is installed in both daemons' ``qemu.d`` before they start. One pair of
daemons serves every step:

* ``virsh start`` on B of a domain in the TSO version: refused by B's hook,
  virsh shows our one line, nothing is written in B's store;
* the same domain runs on A (A's hook assigned its mode); ``virsh migrate``
  to B is refused by B's hook at ``migrate begin``, our line shown, and the
  domain keeps running on A (domstate, QEMU process, A's proxy);
* a domain in the default version runs on A, its negotiated state is put in
  its metadata (``virsh metadata --live``), and it migrates to B: running
  there (domstate, QEMU process), vhost started on B's proxy with the
  guest's features, B's store holding the mode the hook wrote.

The NIC's option ROM is left on, so SeaBIOS's iPXE drives the device and
starts vhost (there is no guest OS): the proxies see a running device, from
~3 s after start until iPXE gives up on DHCP (~20 s here); the compatible
domain migrates within that window.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import require_tool, run_bounded
from vhostcompat import manager
from vhostcompat.lab import libvirt as lab_libvirt
from vhostcompat.lab.commands import ProxyMode, RunningProxy
from vhostcompat.lab.hosts import dpdk_testpmd, run_backend
from vhostcompat.lab.libvirt import (
    CapabilityCache,
    LibvirtDaemon,
    LibvirtHost,
    TcgDomain,
    VhostUserInterface,
)
from vhostcompat.libvirt.calls import NAMESPACE
from vhostcompat.libvirt.hook import install_hook
from vhostcompat.libvirt.metadata import (
    DomainMetadata,
    InterfaceMetadata,
    metadata_from_domain,
)
from vhostcompat.profiles import load_default_catalog
from vhostcompat.proxy import ProxyState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

TSO_VERSION = "debian12.dpdk-vhost.v22.11-tso"
DEFAULT_VERSION = "debian12.dpdk-vhost.v22.11"
IFACE = "vhu0"
MAC = "52:54:00:0a:0b:0c"
VHOST_TIMEOUT = 60.0   # iPXE drives the NIC a few seconds after start, under TCG
SCENARIO_TIMEOUT = 360.0
OUR_LINE = "vhostcompat: domain {domain} cannot run on host {host}: interface " + MAC


def require_libvirt_lab() -> None:
    require_tool("libvirtd", "virtlogd", "virsh", "unshare", "nsenter",
                 "qemu-system-x86_64", "dpdk-testpmd")
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("the libvirt lab needs root (private mount namespaces)")
        pytest.skip("the libvirt lab needs root (private mount namespaces)")


@pytest.fixture(scope="module")
def capability_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapabilityCache]:
    """libvirt's QEMU capabilities, probed by the first daemon, reused by the next."""
    yield CapabilityCache(tmp_path_factory.mktemp("libvirt-capabilities"))


def domain(name: str, version: str, negotiated: InterfaceMetadata | None = None) -> TcgDomain:
    entry = negotiated or InterfaceMetadata(MAC, version, IFACE)
    return TcgDomain(name, (VhostUserInterface(
        MAC, lab_libvirt.VHOST_USER_PATH_INSIDE / f"{IFACE}-proxy.sock"),),
        metadata=(DomainMetadata((entry,)).to_element(),), option_rom=True)


@contextlib.asynccontextmanager
async def backend(daemon: LibvirtDaemon, version: str, *, tso: bool,
                  ) -> AsyncIterator[RunningProxy]:
    """testpmd behind the proxy in ``version``, where this host's QEMU finds it."""
    async with run_backend(daemon.host.vhost_user_dir, IFACE, dpdk_testpmd(tso=tso),
                           ProxyMode(profile=version)) as (_, proxy, _):
        assert proxy is not None
        yield proxy


async def store_mode(address: str) -> str | None:
    record = await manager.read_host(address)
    found = record.interfaces.get(IFACE)
    return found.version if found is not None else None


def assert_refused_by_us(stderr: str, domain_name: str, store: Path) -> None:
    """virsh's error carries our one line (libvirt appends the hook's stderr)."""
    line = OUR_LINE.format(domain=domain_name, host=store)
    assert "Hook script execution failed" in stderr, stderr
    assert line in stderr, stderr
    ours = stderr[stderr.index(line):].strip()
    assert "\n" not in ours, ours
    assert "VIRTIO_NET_F_HOST_TSO4 (bit 11)" in ours, ours


async def wait_running(proxy: RunningProxy) -> None:
    await proxy.wait_for(lambda status: status.state is ProxyState.RUNNING, VHOST_TIMEOUT,
                         "vhost running")


async def assert_runs_on(daemon: LibvirtDaemon, domain_name: str) -> None:
    assert await daemon.domain_state(domain_name) == "running"
    assert daemon.qemu_pid(domain_name) is not None


async def scenario(lab_dir: Path, cache: CapabilityCache) -> None:
    catalog = load_default_catalog()
    stores = {"a": lab_dir / "store-a", "b": lab_dir / "store-b"}
    await manager.publish(str(stores["a"]), catalog)
    await manager.publish(str(stores["b"]), catalog, [DEFAULT_VERSION])

    def install(host: LibvirtHost) -> None:
        install_hook(str(stores[host.name]), host.hooks_dir)

    async with lab_libvirt.run_hosts(lab_dir, ["a", "b"], cache, install) as (a, b):
        # 1. virsh start of a domain whose version B lacks: refused, nothing written.
        refused = await lab_libvirt.define_and_start(b, domain("vm-tso", TSO_VERSION), lab_dir)
        assert not refused.ok
        assert_refused_by_us(refused.stderr, "vm-tso", stores["b"])
        assert await b.domain_state("vm-tso") == "shut off"
        assert await store_mode(str(stores["b"])) is None
        await b.virsh_ok("undefine", "vm-tso")

        # 2. It runs on A; migrating it to B is refused by B's hook; it keeps running on A.
        async with backend(a, TSO_VERSION, tso=True) as proxy_a:
            started = await lab_libvirt.define_and_start(a, domain("vm-tso", TSO_VERSION),
                                                         lab_dir)
            assert started.ok, started.stderr
            assert await store_mode(str(stores["a"])) == TSO_VERSION
            await wait_running(proxy_a)
            vetoed = await lab_libvirt.migrate(a, b, "vm-tso")
            assert not vetoed.ok
            assert_refused_by_us(vetoed.stderr, "vm-tso", stores["b"])
            await assert_runs_on(a, "vm-tso")
            # Still connected (iPXE stops the device by itself ~20 s after start).
            assert proxy_a.status().state in (ProxyState.RUNNING, ProxyState.STOPPED)
            assert await b.domain_state("vm-tso") is None
            assert await store_mode(str(stores["b"])) is None
            await a.virsh_ok("destroy", "vm-tso")

        # 3. A domain in the version both publish migrates, and runs on B.
        async with backend(a, DEFAULT_VERSION, tso=True) as proxy_a, \
                backend(b, DEFAULT_VERSION, tso=False) as proxy_b:
            started = await lab_libvirt.define_and_start(a, domain("vm-ok", DEFAULT_VERSION),
                                                         lab_dir)
            assert started.ok, started.stderr
            await wait_running(proxy_a)
            source_status = proxy_a.status()
            # What the guest negotiated travels with the domain, for B's hook to check.
            negotiated = InterfaceMetadata(MAC, DEFAULT_VERSION, IFACE,
                                           source_status.negotiated_state())
            await a.virsh_ok("metadata", "vm-ok", NAMESPACE, "--key", "vhostcompat", "--set",
                             DomainMetadata((negotiated,)).to_xml(), "--live")
            live = ET.fromstring(await a.virsh_ok("dumpxml", "vm-ok"))
            assert metadata_from_domain(live) == DomainMetadata((negotiated,))

            migrated = await lab_libvirt.migrate(a, b, "vm-ok")
            assert migrated.ok, migrated.stderr
            await assert_runs_on(b, "vm-ok")
            assert a.qemu_pid("vm-ok") is None
            # The version, and what the guest negotiated, travelled with the domain.
            arrived = ET.fromstring(await b.virsh_ok("dumpxml", "vm-ok"))
            assert metadata_from_domain(arrived) == DomainMetadata((negotiated,))
            await wait_running(proxy_b)
            assert proxy_b.status().acked_features == source_status.acked_features
            assert await store_mode(str(stores["b"])) == DEFAULT_VERSION


def test_hook_refuses_what_a_host_cannot_run_and_lets_the_rest_migrate(
        lab_dir: Path, capability_cache: CapabilityCache) -> None:
    require_libvirt_lab()
    run_bounded(scenario(lab_dir, capability_cache), SCENARIO_TIMEOUT)
