"""The agent's writes to the Open vSwitch database: re-created ports and row keys.

OVS 3.1 reads a ``dpdkvhostuserclient`` port's ``options:vhost-server-path``
only when the port is first registered (a plain ``set``, or ``del-port --
add-port`` in one transaction, leaves OVS on the old socket). So pointing
OVS elsewhere re-creates the port, in two transactions:

1. conditional on the rows read (``wait`` on every copied column of the
   Interface and its Port): unlink the Port from its Bridge (OVSDB then
   collects the Port and Interface rows) and bump ``Open_vSwitch
   next_cfg``; then wait, bounded, until ovs-vswitchd reports that
   configuration applied (``cur_cfg``), so it has really let the old
   netdev go: were both transactions applied in one reconfiguration, OVS
   would keep the netdev (same name) and its old path;
2. insert the Port and Interface again with every configuration column
   kept (:data:`INTERFACE_COLUMNS`, :data:`PORT_COLUMNS`: libvirt's
   ``external_ids:iface-id``, other options, ``mtu_request``, VLAN tags...),
   the new ``vhost-server-path``, and ``ofport_request`` set to the OpenFlow
   port number it had, so flows keep matching.

Between 1 and 2 the port exists only in the agent's journal
(:class:`~vhostcompat.agent.journal.Journal`, written before 1): an agent
killed there re-inserts it when it starts again.

Status and negotiated keys are written with ``mutate`` on
``external_ids`` (delete our keys, insert the new values): other keys on
the row, and concurrent writers of them, are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vhostcompat.agent.reconcile import SERVER_PATH_KEY
from vhostcompat.errors import HostError
from vhostcompat.ovsdb import Insert, Mutate, NamedUuid, OvsdbClient, Select, Uuid, Wait
from vhostcompat.ovsdb.values import decode_value, encode_value

_log = logging.getLogger(__name__)

# Configuration columns (ovs-vswitchd.conf.db(5)); the others are ovs-vswitchd's status.
INTERFACE_COLUMNS = ("name", "type", "options", "other_config", "external_ids",
                     "mtu_request", "ofport_request", "ingress_policing_rate",
                     "ingress_policing_burst", "ingress_policing_kpkts_rate",
                     "ingress_policing_kpkts_burst", "mac", "bfd", "cfm_mpid", "lldp")
INTERFACE_STATUS_COLUMNS = ("ofport", "status")
PORT_COLUMNS = ("name", "tag", "trunks", "cvlans", "vlan_mode", "qos", "mac", "bond_mode",
                "lacp", "bond_updelay", "bond_downdelay", "bond_fake_iface", "fake_bridge",
                "protected", "other_config", "external_ids")
CFG_TIMEOUT = 5.0

Row = dict[str, Any]


class PortError(HostError):
    """A port the agent could not re-create or update; names it and why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"interface {name}: {reason}")


@dataclass(frozen=True)
class PortCopy:
    """Everything needed to insert a port again: its bridge, Port and Interface rows."""

    bridge: str
    port: Row
    interface: Row

    def to_json(self) -> dict[str, object]:
        return {"bridge": self.bridge, "port": encode_row(self.port),
                "interface": encode_row(self.interface)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PortCopy:
        return cls(str(data["bridge"]), decode_row(data["port"]), decode_row(data["interface"]))


def encode_row(row: Row) -> dict[str, object]:
    """A row in RFC 7047 JSON (for the journal)."""
    return {column: encode_value(value) for column, value in row.items()}


def decode_row(data: Mapping[str, Any]) -> Row:
    return {column: decode_value(value) for column, value in data.items()}


class Tables:
    """The agent's copy of the rows it monitors, by table and UUID."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Uuid, Row]] = {}
        self.changed = asyncio.Event()

    def replace(self, table: str, rows: dict[Uuid, Row]) -> None:
        self.rows[table] = rows

    def table(self, table: str) -> dict[Uuid, Row]:
        return self.rows.setdefault(table, {})

    def interface(self, name: str) -> tuple[Uuid, Row] | None:
        for uuid, row in self.table("Interface").items():
            if row.get("name") == name:
                return uuid, row
        return None

    def port_of(self, interface: Uuid) -> tuple[Uuid, Row] | None:
        for uuid, row in self.table("Port").items():
            if interface in _members(row.get("interfaces")):
                return uuid, row
        return None

    def bridge_of(self, port: Uuid) -> tuple[Uuid, Row] | None:
        for uuid, row in self.table("Bridge").items():
            if port in _members(row.get("ports")):
                return uuid, row
        return None

    def open_vswitch(self) -> tuple[Uuid, Row] | None:
        return next(iter(self.table("Open_vSwitch").items()), None)


def _members(value: object) -> frozenset[object]:
    if isinstance(value, frozenset):
        return value
    return frozenset() if value is None else frozenset({value})


def _kept(row: Row, columns: tuple[str, ...]) -> Row:
    return {column: row[column] for column in columns if column in row}


def copy_of(tables: Tables, name: str) -> tuple[PortCopy, Uuid, Uuid, Uuid]:
    """The port holding interface ``name``: its copy, and the Interface, Port, Bridge UUIDs."""
    found = tables.interface(name)
    if found is None:
        raise PortError(name, "no such Interface row")
    interface_uuid, interface = found
    port = tables.port_of(interface_uuid)
    if port is None:
        raise PortError(name, "no Port holds it")
    port_uuid, port_row = port
    if len(_members(port_row.get("interfaces"))) != 1:
        raise PortError(name, f"port {port_row.get('name')} has several interfaces (a bond); "
                              "only single-interface ports are re-created")
    bridge = tables.bridge_of(port_uuid)
    if bridge is None:
        raise PortError(name, f"port {port_row.get('name')} is on no bridge")
    bridge_uuid, bridge_row = bridge
    copy = PortCopy(str(bridge_row.get("name")), _kept(port_row, PORT_COLUMNS),
                    _kept(interface, INTERFACE_COLUMNS))
    return copy, interface_uuid, port_uuid, bridge_uuid


def changed_copy(copy: PortCopy, server_path: str, *, set_ids: Mapping[str, str],
                 drop_ids: tuple[str, ...], ofport: object) -> PortCopy:
    """``copy`` with a new ``vhost-server-path`` and external_ids changes; ofport kept."""
    interface = dict(copy.interface)
    interface["options"] = {**dict(interface.get("options") or {}), SERVER_PATH_KEY: server_path}
    external_ids = {key: value for key, value in dict(interface.get("external_ids") or {}).items()
                    if key not in drop_ids}
    interface["external_ids"] = {**external_ids, **set_ids}
    number = next(iter(ofport), None) if isinstance(ofport, frozenset) else ofport
    if not _members(interface.get("ofport_request")) and isinstance(number, int) \
            and not isinstance(number, bool) and 0 < number < 0xFF00:
        interface["ofport_request"] = number
    return PortCopy(copy.bridge, copy.port, interface)


class PortWriter:
    """Re-creates ports and writes the agent's keys, through one OVSDB client."""

    def __init__(self, client: OvsdbClient, tables: Tables,
                 cfg_applied: Callable[[int], asyncio.Future[None] | None],
                 cfg_timeout: float = CFG_TIMEOUT) -> None:
        self.client = client
        self.tables = tables
        self.cfg_applied = cfg_applied
        self.cfg_timeout = cfg_timeout

    async def remove(self, name: str) -> PortCopy:
        """Step 1: unlink the port (conditional on the rows read); waits for vswitchd."""
        copy, interface_uuid, port_uuid, bridge_uuid = copy_of(self.tables, name)
        interface_row = self.tables.table("Interface")[interface_uuid]
        port_row = self.tables.table("Port")[port_uuid]
        switch = self.tables.open_vswitch()
        operations: list[Any] = [
            Wait("Interface", where=[("_uuid", "==", interface_uuid)],
                 columns=list(copy.interface), rows=[_kept(interface_row, tuple(copy.interface))]),
            Wait("Port", where=[("_uuid", "==", port_uuid)],
                 columns=[*copy.port, "interfaces"],
                 rows=[_kept(port_row, (*copy.port, "interfaces"))]),
            Mutate("Bridge", where=[("_uuid", "==", bridge_uuid)],
                   mutations=[("ports", "delete", frozenset({port_uuid}))]),
        ]
        in_step = False
        if switch is not None:
            switch_uuid, switch_row = switch
            in_step = switch_row.get("cur_cfg") == switch_row.get("next_cfg")
            operations += [Mutate("Open_vSwitch", where=[("_uuid", "==", switch_uuid)],
                                  mutations=[("next_cfg", "+=", 1)]),
                           Select("Open_vSwitch", where=[("_uuid", "==", switch_uuid)],
                                  columns=["next_cfg"])]
        results = await self.client.transact(*operations)
        if switch is not None and in_step:
            # Only when vswitchd was keeping up: a stopped one reads the final
            # state when it starts, and there is nothing to wait for.
            target = results[-1]["rows"][0]["next_cfg"]
            await self._wait_cfg(int(target), name)
        return copy

    async def _wait_cfg(self, target: int, name: str) -> None:
        waiter = self.cfg_applied(target)
        if waiter is None:
            return
        try:
            await asyncio.wait_for(waiter, self.cfg_timeout)
        except TimeoutError:
            _log.warning("event=cfg-timeout iface=%s next_cfg=%d: ovs-vswitchd did not "
                         "apply the removal within %gs; inserting anyway", name, target,
                         self.cfg_timeout)

    async def insert(self, copy: PortCopy) -> None:
        """Step 2: insert the port again (on its bridge, by name)."""
        name = str(copy.interface.get("name"))
        bridge = next((uuid for uuid, row in self.tables.table("Bridge").items()
                       if row.get("name") == copy.bridge), None)
        if bridge is None:
            raise PortError(name, f"bridge {copy.bridge} is gone; the port cannot be "
                                  "inserted again")
        await self.client.transact(
            Wait("Interface", where=[("name", "==", name)], columns=["name"], rows=[]),
            Insert("Interface", copy.interface, uuid_name="iface"),
            Insert("Port", {**copy.port, "interfaces": NamedUuid("iface")}, uuid_name="port"),
            Mutate("Bridge", where=[("_uuid", "==", bridge)],
                   mutations=[("ports", "insert", frozenset({NamedUuid("port")}))]))

    async def write_ids(self, name: str, values: Mapping[str, str],
                        drop: tuple[str, ...] = ()) -> bool:
        """Set (and first delete) keys of an Interface's external_ids; nothing else.

        False when no such row exists right now (e.g. while it is re-created).
        """
        keys = frozenset({*drop, *values})
        mutations: list[Any] = [("external_ids", "delete", keys)] if keys else []
        if values:
            mutations.append(("external_ids", "insert", dict(values)))
        if not mutations:
            return True
        (result,) = await self.client.transact(Mutate("Interface", where=[("name", "==", name)],
                                                      mutations=mutations))
        return bool(result.get("count"))
