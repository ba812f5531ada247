"""What the OVS-DPDK instance behind a database offers to a vhost-user front-end.

OVS exposes its vhost-user offer only to a front-end that it connects to, so
:func:`probe_ovs` plays one for a moment:

1. listen on a socket of our own (a fresh directory);
2. add a transient ``dpdkvhostuserclient`` port to a netdev bridge, its
   ``options:vhost-server-path`` that socket (one transaction: Interface,
   Port, and the Bridge's ``ports`` mutated);
3. when OVS connects, ask GET_FEATURES, GET_PROTOCOL_FEATURES and
   GET_QUEUE_NUM as :mod:`vhostcompat.probe` does (nothing configured);
4. remove the port again (always, also on failure or timeout).

Every wait is bounded. The port is named ``vcprobe-<pid>-<n>`` so that a
leftover one (a probe killed between 2 and 4) is recognisable; the next
probe removes leftovers whose socket no longer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from vhostcompat.errors import HostError
from vhostcompat.ovsdb import (
    Insert,
    Mutate,
    NamedUuid,
    OvsdbClient,
    OvsdbError,
    Select,
    Uuid,
    connect,
)
from vhostcompat.probe import DEFAULT_TIMEOUT, ProbeError, ProbeResult, probe_connection
from vhostcompat.transport import FdConnection, listen

PORT_PREFIX = "vcprobe-"
_counter = itertools.count(1)


class OvsProbeError(HostError):
    """The OVS-DPDK instance behind a database could not be probed; says why."""

    def __init__(self, remote: str, reason: str) -> None:
        self.remote = remote
        self.reason = reason
        super().__init__(f"probe of the OVS-DPDK behind {remote}: {reason}")


async def _netdev_bridge(client: OvsdbClient, remote: str) -> Uuid:
    (result,) = await client.transact(Select("Bridge", where=[("datapath_type", "==", "netdev")],
                                             columns=["_uuid", "name"]))
    rows = sorted(result["rows"], key=lambda row: str(row["name"]))
    if not rows:
        raise OvsProbeError(remote, "no bridge with datapath_type=netdev (OVS-DPDK's "
                                    "userspace datapath) to add a probe port to")
    uuid = rows[0]["_uuid"]
    assert isinstance(uuid, Uuid)
    return uuid


async def _add_port(client: OvsdbClient, bridge: Uuid, name: str, socket_path: Path) -> None:
    await client.transact(
        Insert("Interface", {"name": name, "type": "dpdkvhostuserclient",
                             "options": {"vhost-server-path": str(socket_path)}},
               uuid_name="probe_iface"),
        Insert("Port", {"name": name, "interfaces": NamedUuid("probe_iface")},
               uuid_name="probe_port"),
        Mutate("Bridge", where=[("_uuid", "==", bridge)],
               mutations=[("ports", "insert", frozenset({NamedUuid("probe_port")}))]))


async def remove_ports(client: OvsdbClient, names: list[str]) -> None:
    """Unlink the named ports from every bridge (OVSDB then collects their rows)."""
    if not names:
        return
    (ports,) = await client.transact(Select("Port", where=[], columns=["_uuid", "name"]))
    uuids = frozenset(row["_uuid"] for row in ports["rows"] if row["name"] in names)
    if uuids:
        await client.transact(Mutate("Bridge", where=[],
                                     mutations=[("ports", "delete", uuids)]))


async def _leftovers(client: OvsdbClient) -> list[str]:
    """Probe ports whose socket is gone (their probe died before removing them)."""
    (result,) = await client.transact(Select("Interface", where=[],
                                             columns=["name", "options"]))
    found = []
    for row in result["rows"]:
        name, options = row["name"], row["options"]
        if isinstance(name, str) and name.startswith(PORT_PREFIX) and isinstance(
                options, dict) and not os.path.exists(str(options.get("vhost-server-path",
                                                                       ""))):
            found.append(name)
    return found


@contextlib.asynccontextmanager
async def _socket_for_ovs() -> AsyncIterator[tuple[Path, asyncio.Queue[FdConnection]]]:
    directory = Path(tempfile.mkdtemp(prefix="vc-probe-", dir="/tmp"))  # short for sun_path
    arrivals: asyncio.Queue[FdConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def arrived(connection: FdConnection) -> None:
        await arrivals.put(connection)
        await done.wait()  # the listener closes the connection when this returns

    path = directory / "ovs.sock"
    try:
        async with await listen(path, arrived):
            yield path, arrivals
            done.set()
    finally:
        done.set()
        shutil.rmtree(directory, ignore_errors=True)


async def probe_ovs(remote: str, *, timeout: float = DEFAULT_TIMEOUT,
                    connect_timeout: float | None = None) -> ProbeResult:
    """Probe the OVS-DPDK instance that serves the database at ``remote``.

    ``timeout`` bounds each database call and the vhost-user exchange;
    ``connect_timeout`` (default: ``timeout``) how long OVS may take to
    connect to the probe's socket.
    """
    if connect_timeout is None:
        connect_timeout = timeout
    try:
        client = await connect(remote, database="Open_vSwitch", timeout=timeout,
                               required_columns={"Interface": ("name", "type", "options"),
                                                 "Port": ("name", "interfaces"),
                                                 "Bridge": ("name", "ports",
                                                            "datapath_type")})
    except OvsdbError as error:
        raise OvsProbeError(remote, str(error)) from None
    name = f"{PORT_PREFIX}{os.getpid()}-{next(_counter)}"
    try:
        await remove_ports(client, await _leftovers(client))
        bridge = await _netdev_bridge(client, remote)
        async with _socket_for_ovs() as (path, arrivals):
            await _add_port(client, bridge, name, path)
            try:
                async def ovs_connection() -> FdConnection:
                    try:
                        return await asyncio.wait_for(arrivals.get(), connect_timeout)
                    except TimeoutError:
                        raise ProbeError(str(path), "connect", f"OVS did not connect within "
                                         f"{connect_timeout:g}s (is ovs-vswitchd-dpdk running "
                                         f"with dpdk-init=true?)") from None

                return await probe_connection(ovs_connection, f"OVS port {name}",
                                              timeout=connect_timeout + timeout)
            finally:
                await remove_ports(client, [name])
    except OvsdbError as error:
        raise OvsProbeError(remote, str(error)) from None
    except ProbeError as error:
        raise OvsProbeError(remote, str(error)) from None
    finally:
        await client.close()
