"""The host side on real OVS-DPDK: verified publishing, the agent, QEMU, and crashes.

Two Open vSwitch instances with the DPDK datapath run side by side (host A
with ``userspace-tso-enable=true``, host B without), each with its own
ovsdb-server; QEMU is the vhost-user server of ``dpdkvhostuserclient``
ports, a qtest driver its guest.

* ``publish --probe-ovs`` asks each OVS what it really offers and publishes
  only the OVS 3.1 profiles it honours: B drops the TSO one, naming
  HOST_TSO4 and HOST_TSO6; both keep the ``-base`` version, which ``select``
  then picks;
* without a mode the guest on A acks TSO and the migration to B fails
  inside QEMU;
* with both agents running, ``ovs-vsctl set Interface vhu0
  options:vhost-compat-version=V`` brings QEMU's device up in V (its
  backend's offer is V's features), the migration completes, the device runs
  on B, and what the agent recorded on B's row equals OVS's own
  ``status:features``;
* killing B's ovsdb-server, then B's agent, then B's ovs-vswitchd-dpdk each
  leaves the system converged: the device runs again, one proxy, one port,
  QEMU's path still on the row; so does a mode changed on the running
  interface (its proxy restarts in it, the port stays).

The slow parts (two OVS-DPDK instances, four QEMUs) are shared by the steps
of one test; the bad input needs only an ovsdb-server and runs in its own.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_tool, run_bounded, run_cli_process
from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import RunningAgent, run_agent
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.ovs import OVS_VSCTL, OvsConfig, RunningOvs, run_ovs, run_ovs_pair
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qemu import device_offer
from vhostcompat.lab.story import FRONTEND_PATH_KEY, ovs_migration, qemu_socket
from vhostcompat.profiles import load_catalog
from vhostcompat.realtime import is_realtime

CATALOG = Path(__file__).parents[2] / "src/vhostcompat/catalogs/ovs-dpdk-3.1.toml"
TSO, DEFAULT, BASE = ("debian12.ovs-dpdk.v3.1-tso", "debian12.ovs-dpdk.v3.1",
                      "debian12.ovs-dpdk.v3.1-base")
HOST_TSO = VirtioFeature.VIRTIO_NET_F_HOST_TSO4 | VirtioFeature.VIRTIO_NET_F_HOST_TSO6
CONVERGE_TIMEOUT = 30.0
SCENARIO_TIMEOUT = 240.0

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def needs_ovs_dpdk() -> None:
    require_tool("qemu-system-x86_64", "ovsdb-server", OVS_VSCTL, "unshare",
                 "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")


def scenario(coroutine: Coroutine[Any, Any, None]) -> None:
    run_bounded(coroutine, SCENARIO_TIMEOUT)



async def published(host: RunningOvs) -> str:
    return (await host.get("Open_vSwitch", ".", "external_ids:vhost-compat-versions")).strip('"')


def listeners(path: str) -> int:
    """How many sockets of this network namespace are bound to ``path`` (/proc/net/unix).

    A connection accepted from OVS belongs to OVS's namespace (unshare --net),
    so this counts the listeners: one per proxy.
    """
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[-1] == path)


SEEN: dict[str, object] = {}


async def converged(host: RunningOvs, agent: RunningAgent, iface: str,
                    qemu_path: Path) -> bool:
    """B runs the interface in its mode again: every piece in place, nothing twice.

    What was seen last is kept in :data:`SEEN`, for the failure message.
    """
    try:
        ids = json.loads(await host.vsctl("--format=json", "--columns=external_ids,options,"
                                          "status", "list", "Interface", iface))
    except LabError:
        return False  # the row is being re-created
    (row,) = ids["data"]
    external_ids, options, status = (dict(column[1]) for column in row)
    agent_path = str(agent.state_dir / f"{iface}.sock")
    SEEN.update(external_ids=external_ids, options=options, status=status,
                listeners=listeners(agent_path), ovs_device=ovs_device_added(host, agent_path))
    return (external_ids.get(FRONTEND_PATH_KEY) == str(qemu_path)
            and options.get("vhost-server-path") == agent_path
            and external_ids.get("vhost-compat-status") == "running"
            and ovs_device_added(host, agent_path)
            and listeners(agent_path) == 1)  # one proxy listens (OVS's end is in its netns)


def ovs_device_added(host: RunningOvs, socket: str) -> bool:
    """OVS's own log (of the running vswitchd) says its vhost device on ``socket`` is up.

    Not ``Interface status:status``: after a restart of ovs-vswitchd, OVS 3.1 was
    seen to log the device added and leave that column at ``disconnected``.
    """
    text = host.vswitchd_log.read_text(errors="replace")
    return text.rfind(f"vHost Device '{socket}' has been added") > text.rfind(
        f"vHost Device '{socket}' has been removed")


def test_publish_select_and_migrate_on_two_ovs_dpdk_hosts_with_agents(lab_dir: Path) -> None:
    needs_ovs_dpdk()
    base = load_catalog([CATALOG]).get(BASE)

    async def play() -> None:
        async with run_ovs_pair([OvsConfig("a", tso=True), OvsConfig("b")], lab_dir) as pair:
            host_a, host_b = pair["a"], pair["b"]
            # Verified publishing: each OVS says what it honours.
            reports = {}
            for host in (host_a, host_b):
                status, out, err = await run_cli_process("publish", "--db", host.remote,
                                                     "--catalog", str(CATALOG),
                                                     "--probe-ovs", "--json")
                assert status == 0, err
                reports[host.config.name] = json.loads(out)
                assert await host.vsctl("list-ports", host.bridge) == ""  # probe port gone
            assert reports["a"]["published"] == [TSO, BASE]
            assert reports["b"]["published"] == [DEFAULT, BASE]
            (dropped,) = [entry for entry in reports["b"]["dropped"] if entry["version"] == TSO]
            assert {"VIRTIO_NET_F_HOST_TSO4 (bit 11)", "VIRTIO_NET_F_HOST_TSO6 (bit 12)"} <= set(
                dropped["missing"]), dropped
            assert await published(host_a) == f"{TSO},{BASE}"
            assert await published(host_b) == f"{DEFAULT},{BASE}"
            status, out, err = await run_cli_process("select", host_a.remote, host_b.remote)
            assert (status, out.strip()) == (0, BASE), err

            # Without a mode: the guest takes A's TSO and B's QEMU refuses the load.
            async with ovs_migration(lab_dir, host_a, host_b, "vhu1") as (run, _, _):
                assert run.host_features & HOST_TSO == HOST_TSO
                assert run.acked & HOST_TSO == HOST_TSO
                assert run.status == "failed"
                assert run.destination_error is not None and "unsupported" in \
                    run.destination_error

            # With both agents: the mode assigned with ovs-vsctl set, run by each agent
            # (B's relaying at SCHED_FIFO).
            async with run_agent(host_a.remote, lab_dir / "agent-a", lab_dir, "agent-a"), \
                    run_agent(host_b.remote, lab_dir / "agent-b", lab_dir, "agent-b",
                              options=("--realtime-priority", "1")) as agent_b, \
                    ovs_migration(lab_dir, host_a, host_b, "vhu0", BASE) as (run, _, qemu_b):
                assert is_realtime(agent_b.process.pid)
                # Its start and QEMU's device start stay well within the CPU guard.
                assert "normal scheduling for" not in agent_b.process.log_text()
                # QEMU's device came up in V: its back-end offered V, its guest saw V's share.
                assert run.offered == base.virtio_features
                assert run.host_features == device_offer(base.virtio_features)
                assert not run.host_features & HOST_TSO
                assert not run.acked & HOST_TSO
                assert run.status == "completed"
                assert run.destination_acked == run.acked
                recorded = dict(item.split("=", 1) for item in
                                run.destination_external_ids.strip("{}").split(", "))
                assert run.destination_ovs_features is not None
                assert int(recorded["vhost-compat-acked-features"].strip('"'), 16) == \
                    int(run.destination_ovs_features.strip('"'), 16)
                await crash_everything_on(host_b, agent_b, qemu_b, lab_dir)
            # Both agents stopped (SIGTERM): the ports stay on their sockets, fail closed.
            path = (await host_b.get("Interface", "vhu0", "options:vhost-server-path"))
            assert path.strip('"') != str(qemu_socket(lab_dir, host_b, "vhu0"))

    scenario(play())


def running_reports(agent: RunningAgent) -> int:
    """How often the agent wrote ``running`` on a row: the device came up through a proxy."""
    return sum(1 for line in agent.events("status") if " status=running" in line)


async def crash_everything_on(host: RunningOvs, agent: RunningAgent, qemu: Any,
                              run_dir: Path) -> None:
    """Kill ovsdb-server, then the agent, then vswitchd, then change the mode; each time
    the system converges.

    Each crash is first seen to have an effect (the agent resyncs, or writes
    ``running`` again after the device restarted), then every piece is checked.
    """
    qemu_path = qemu_socket(run_dir, host, "vhu0")

    async def settle(watcher: RunningAgent, reports: int, what: str) -> None:
        await wait_until(lambda: running_reports(watcher) > reports, CONVERGE_TIMEOUT,
                         f"the device to run again after {what}", interval=0.05)
        try:
            await wait_until(lambda: converged(host, watcher, "vhu0", qemu_path),
                             CONVERGE_TIMEOUT, f"convergence after {what}", interval=0.1)
        except LabError as error:
            vswitchd = "\n".join(host.vswitchd_log.read_text().splitlines()[-25:])
            raise AssertionError(f"{error}; last seen: {SEEN}; agent log: "
                                 f"{watcher.process.log_tail(15)}; vswitchd log: "
                                 f"{vswitchd}") from None
        await qmp.wait_for_vhost_started(qemu, CONVERGE_TIMEOUT)

    await settle(agent, 0, "the migration")
    started = len(agent.events("proxy-started"))
    reports = running_reports(agent)
    await host.restart_ovsdb_server(crash=True)
    await settle(agent, reports, "ovsdb-server was killed")  # written again after the resync
    assert len(agent.events("resync")) == 2
    assert len(agent.events("proxy-started")) == started  # no duplicate proxy
    await agent.process.kill()
    async with run_agent(host.remote, agent.state_dir, run_dir, "agent-b2") as again:
        await settle(again, 0, "the agent was killed")
        assert len(again.events("proxy-started")) == 1
        assert not again.events("redirected")  # the row already said where QEMU is
        reports = running_reports(again)
        await host.restart_vswitchd(crash=True)
        await settle(again, reports, "ovs-vswitchd was killed")
        assert len(again.events("proxy-started")) == 1
        # Another mode on the running interface (B publishes it; the guest's features
        # fit in it): the proxy restarts in it, QEMU and OVS reconnect, no port re-created.
        reports = running_reports(again)
        await host.vsctl("set", "Interface", "vhu0", f"options:vhost-compat-version={DEFAULT}")
        await settle(again, reports, f"the mode changed to {DEFAULT}")
        assert [line for line in again.events("proxy-started")
                if f"mode={DEFAULT} " in line] and not again.events("redirected")


def test_bad_input_is_refused_on_the_row_or_with_one_line(lab_dir: Path) -> None:
    """Only an ovsdb-server (vswitchd never starts): refused modes, dead sockets, no OVS."""
    needs_ovs_dpdk()

    async def play() -> None:
        async with run_ovs(OvsConfig("c"), lab_dir / "c", vswitchd=False) as host:
            ids_before = await host.get("Open_vSwitch", ".", "external_ids")
            # --probe of a socket nobody listens on; --probe-ovs with no vswitchd; no db.
            for arguments in (["--db", host.remote, "--probe", str(lab_dir / "nobody.sock")],
                              ["--db", host.remote, "--probe-ovs", "--probe-timeout", "1"],
                              ["--db", f"unix:{lab_dir / 'no-db.sock'}", "--probe-ovs"]):
                status, out, err = await run_cli_process("publish", "--catalog", str(CATALOG),
                                                     *arguments)
                assert status == 2, (arguments, out, err)
                assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert await host.get("Open_vSwitch", ".", "external_ids") == ids_before
            assert await host.vsctl("list-ports", host.bridge) == ""  # no probe port left
            status, _, err = await run_cli_process("agent", "--db", f"unix:{lab_dir / 'no.sock'}",
                                               "--state-dir", str(lab_dir / "s"))
            assert status == 2 and len(err.strip().splitlines()) == 1, err

            # A version this host does not publish: refused on the row, OVS kept off QEMU.
            qemu_path = lab_dir / "qemu-vhu9.sock"
            await host.add_vhost_client_port("vhu9", qemu_path, [
                "options:vhost-compat-version=lab.not-published",
                "external_ids:iface-id=libvirt-port-9"])
            async with run_agent(host.remote, lab_dir / "agent", lab_dir) as agent:
                agent_path = str(agent.state_dir / "vhu9.sock")

                async def refused() -> bool:
                    try:  # the status is written first, then the port is re-created
                        status = await host.get("Interface", "vhu9",
                                                "external_ids:vhost-compat-status")
                        path = await host.get("Interface", "vhu9", "options:vhost-server-path")
                    except LabError:
                        return False
                    return (status.startswith('"refused: version lab.not-published')
                            and path.strip('"') == agent_path)

                await wait_until(refused, CONVERGE_TIMEOUT, "the refusal on the row")
                assert (await host.get("Interface", "vhu9", "external_ids:iface-id")
                        ) == "libvirt-port-9"  # everything else on the port kept
                assert (await host.get("Interface", "vhu9",
                                       f"external_ids:{FRONTEND_PATH_KEY}")
                        ).strip('"') == str(qemu_path)
                assert listeners(str(agent.state_dir / "vhu9.sock")) == 0  # no proxy runs
                assert agent.events("status")
                # The mode removed: QEMU's own path comes back.
                await host.vsctl("remove", "Interface", "vhu9", "options",
                                 "vhost-compat-version")

                async def restored() -> bool:
                    try:
                        return (await host.get("Interface", "vhu9",
                                               "options:vhost-server-path")
                                ).strip('"') == str(qemu_path)
                    except LabError:
                        return False

                await wait_until(restored, CONVERGE_TIMEOUT, "QEMU's path restored")
                external_ids = await host.get("Interface", "vhu9", "external_ids")
                assert external_ids == "{iface-id=libvirt-port-9}", external_ids

    scenario(play())
