"""agent.ports, agent.journal and the daemon's pure parts: what a re-created port keeps,
what survives a crash, where the sockets go, what the row says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vhostcompat.agent.daemon import AgentConfig, status_of
from vhostcompat.agent.journal import Journal, JournalError
from vhostcompat.agent.ports import (
    PortCopy,
    PortError,
    Tables,
    changed_copy,
    copy_of,
    decode_row,
    encode_row,
)
from vhostcompat.errors import InputError
from vhostcompat.ovsdb import Uuid
from vhostcompat.proxy import ProxyState, ProxyStatus

IFACE, PORT, BRIDGE = (Uuid(f"{digit * 8}-0000-0000-0000-000000000000") for digit in "123")
QOS = Uuid("44444444-0000-0000-0000-000000000000")


def tables(interfaces: frozenset[Uuid] = frozenset({IFACE})) -> Tables:
    found = Tables()
    found.replace("Interface", {IFACE: {
        "name": "vhu0", "type": "dpdkvhostuserclient", "mtu_request": 9000,
        "options": {"vhost-server-path": "/run/qemu/vhu0.sock", "n_rxq_desc": "1024"},
        "external_ids": {"iface-id": "port-1", "vhost-compat-status": "running"},
        "ofport_request": frozenset(), "ofport": frozenset({7}),
        "status": {"features": "0x1"}}})
    found.replace("Port", {PORT: {"name": "vhu0", "interfaces": interfaces, "tag": 42,
                                  "qos": QOS, "external_ids": {}}})
    found.replace("Bridge", {BRIDGE: {"name": "br-int", "ports": frozenset({PORT})}})
    return found


def test_a_copy_keeps_every_configuration_column_and_not_ovs_status() -> None:
    copy, interface, port, bridge = copy_of(tables(), "vhu0")
    assert (interface, port, bridge, copy.bridge) == (IFACE, PORT, BRIDGE, "br-int")
    assert copy.interface["mtu_request"] == 9000
    assert "status" not in copy.interface and "ofport" not in copy.interface
    assert copy.port == {"name": "vhu0", "tag": 42, "qos": QOS, "external_ids": {}}


def test_the_changed_copy_points_elsewhere_and_keeps_the_openflow_port() -> None:
    copy, *_ = copy_of(tables(), "vhu0")
    new = changed_copy(copy, "/var/lib/vc/vhu0.sock",
                       set_ids={"vhost-compat-frontend-path": "/run/qemu/vhu0.sock"},
                       drop_ids=("vhost-compat-status",), ofport=frozenset({7}))
    assert new.interface["options"] == {"vhost-server-path": "/var/lib/vc/vhu0.sock",
                                        "n_rxq_desc": "1024"}
    assert new.interface["external_ids"] == {
        "iface-id": "port-1", "vhost-compat-frontend-path": "/run/qemu/vhu0.sock"}
    assert new.interface["ofport_request"] == 7
    assert copy.interface["options"]["vhost-server-path"] == "/run/qemu/vhu0.sock"  # untouched
    requested = changed_copy(PortCopy("br", {}, {**copy.interface, "ofport_request": 3}),
                             "/x", set_ids={}, drop_ids=(), ofport=frozenset({7}))
    assert requested.interface["ofport_request"] == 3  # an operator's request wins


def test_bonds_missing_rows_and_orphans_are_refused_by_name() -> None:
    with pytest.raises(PortError, match="interface vhu9: no such Interface row"):
        copy_of(tables(), "vhu9")
    other = Uuid("55555555-0000-0000-0000-000000000000")
    with pytest.raises(PortError, match="several interfaces"):
        copy_of(tables(frozenset({IFACE, other})), "vhu0")
    orphan = tables()
    orphan.replace("Bridge", {})
    with pytest.raises(PortError, match="is on no bridge"):
        copy_of(orphan, "vhu0")


def test_rows_survive_the_journal_round_trip(tmp_path: Path) -> None:
    copy, *_ = copy_of(tables(), "vhu0")
    assert decode_row(json.loads(json.dumps(encode_row(copy.port)))) == copy.port
    journal = Journal.open(tmp_path / "state")
    journal.entry("vhu0").frontend_path = "/run/qemu/vhu0.sock"
    journal.entry("vhu0").pending = copy
    journal.save()
    again = Journal.open(tmp_path / "state")
    assert again.frontends() == {"vhu0": "/run/qemu/vhu0.sock"}
    assert again.entries["vhu0"].pending == copy
    again.forget("vhu0")
    assert Journal.open(tmp_path / "state").entries == {}


def test_an_unreadable_journal_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "agent-state.json").write_text('{"interfaces": [1]}')
    with pytest.raises(JournalError, match=r"unreadable .*move it away") as error:
        Journal.open(tmp_path)
    assert "\n" not in str(error.value)


def test_agent_sockets_are_path_safe_and_fit_a_unix_socket_path(tmp_path: Path) -> None:
    config = AgentConfig("unix:/run/db.sock", tmp_path)
    assert config.socket_path("vhu0") == str(tmp_path / "vhu0.sock")
    hashed = config.socket_path("../etc/passwd")
    assert Path(hashed).parent == tmp_path and Path(hashed).name.startswith("iface-")
    assert config.socket_path("x" * 60) != config.socket_path("y" * 60)
    config.check()
    with pytest.raises(InputError, match="too long for the agent's sockets"):
        AgentConfig("unix:/run/db.sock", Path("/" + "d" * 100)).check()


def test_a_proxys_state_becomes_the_rows_status() -> None:
    def row(state: ProxyState, detail: str = "") -> str:
        return str(status_of(ProxyStatus("v1", state, detail)))

    assert row(ProxyState.RUNNING) == "running"
    assert row(ProxyState.REFUSED, "SET_FEATURES refused: VIRTIO_NET_F_HOST_TSO4") == \
        "refused: SET_FEATURES refused: VIRTIO_NET_F_HOST_TSO4"
    assert row(ProxyState.FAILED, "back-end unreachable") == "failed: back-end unreachable"
    assert {row(state) for state in (ProxyState.WAITING, ProxyState.BACKEND_LOST,
                                     ProxyState.STOPPED)} == {"waiting"}
