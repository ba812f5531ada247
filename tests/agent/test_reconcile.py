"""agent.reconcile: from Interface rows and published versions to the agent's actions."""

from __future__ import annotations

from vhostcompat.agent.reconcile import (
    FRONTEND_PATH_KEY,
    MODE_KEY,
    SERVER_PATH_KEY,
    InterfaceView,
    Redirect,
    Restore,
    RunningProxy,
    StartProxy,
    Status,
    StatusKind,
    StopProxy,
    WriteStatus,
    reconcile,
    reconcile_interface,
)
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import STATUS_KEY
from vhostcompat.profiles import CompatProfile

V1 = CompatProfile("lab.v1", VirtioFeature.VIRTIO_F_VERSION_1)
V2 = CompatProfile("lab.v2", VirtioFeature.VIRTIO_F_VERSION_1
                   | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC)
PUBLISHED = {V2.version: V2, V1.version: V1}
QEMU = "/run/qemu/vhu0.sock"
AGENT = "/run/vhostcompat/vhu0.sock"


def view(mode: str | None = None, *, server_path: str | None = QEMU,
         frontend: str | None = None, kind: str = "dpdkvhostuserclient",
         status: str | None = None, name: str = "vhu0") -> InterfaceView:
    options = {} if mode is None else {MODE_KEY: mode}
    if server_path is not None:
        options[SERVER_PATH_KEY] = server_path
    external_ids = {"iface-id": "port-1"}
    if frontend is not None:
        external_ids[FRONTEND_PATH_KEY] = frontend
    if status is not None:
        external_ids[STATUS_KEY] = status
    return InterfaceView(name, kind, options, external_ids)


def actions(row: InterfaceView, running: RunningProxy | None = None,
            known: str | None = None) -> list[object]:
    return list(reconcile_interface(row, PUBLISHED, running, AGENT, known))


def test_an_interface_without_a_mode_is_left_alone() -> None:
    assert actions(view()) == []


def test_a_new_mode_starts_the_proxy_before_redirecting_ovs() -> None:
    assert actions(view(V1.version)) == [StartProxy("vhu0", V1, QEMU),
                                         Redirect("vhu0", QEMU, AGENT)]


def test_a_port_created_without_a_server_path_takes_qemus_from_external_ids() -> None:
    row = view(V1.version, server_path=None, frontend=QEMU)
    assert actions(row) == [StartProxy("vhu0", V1, QEMU), Redirect("vhu0", QEMU, AGENT)]


def test_a_redirected_interface_whose_proxy_runs_needs_nothing() -> None:
    row = view(V1.version, server_path=AGENT, frontend=QEMU)
    assert actions(row, RunningProxy(V1.version, QEMU)) == []


def test_after_an_agent_restart_the_proxy_starts_again_without_touching_the_port() -> None:
    row = view(V1.version, server_path=AGENT, frontend=QEMU)
    assert actions(row) == [StartProxy("vhu0", V1, QEMU)]


def test_a_changed_mode_restarts_the_proxy_in_the_new_mode() -> None:
    row = view(V2.version, server_path=AGENT, frontend=QEMU)
    assert actions(row, RunningProxy(V1.version, QEMU)) == [
        StopProxy("vhu0", "mode lab.v1 -> lab.v2"), StartProxy("vhu0", V2, QEMU)]


def test_a_version_not_published_is_refused_but_ovs_is_still_kept_off_qemu() -> None:
    found = actions(view("lab.v9"))
    assert found[-1] == Redirect("vhu0", QEMU, AGENT)
    (status,) = [action for action in found if isinstance(action, WriteStatus)]
    assert status.status.kind is StatusKind.REFUSED
    assert "lab.v9 is not published by this host (it publishes: lab.v2, lab.v1)" in str(
        status.status)
    assert not any(isinstance(action, StartProxy) for action in found)


def test_a_version_withdrawn_while_running_stops_the_proxy() -> None:
    row = view(V2.version, server_path=AGENT, frontend=QEMU)
    found = reconcile_interface(row, {V1.version: V1}, RunningProxy(V2.version, QEMU),
                                AGENT)
    assert found[0] == StopProxy("vhu0", "lab.v2 is not published")
    assert isinstance(found[1], WriteStatus) and found[1].status.kind is StatusKind.REFUSED
    assert len(found) == 2  # the port stays on the agent's socket


def test_a_status_already_on_the_row_is_not_written_again() -> None:
    first = actions(view("lab.v9", server_path=AGENT, frontend=QEMU))
    (write,) = first
    assert isinstance(write, WriteStatus)
    again = view("lab.v9", server_path=AGENT, frontend=QEMU, status=str(write.status))
    assert actions(again) == []


def test_removing_the_mode_restores_qemus_path() -> None:
    row = view(None, server_path=AGENT, frontend=QEMU)
    assert actions(row, RunningProxy(V1.version, QEMU)) == [
        StopProxy("vhu0", "no mode"), Restore("vhu0", QEMU)]


def test_the_state_directory_remembers_qemus_path_when_the_row_lost_it() -> None:
    row = view(None, server_path=AGENT)
    assert actions(row, known=QEMU) == [Restore("vhu0", QEMU)]
    assert actions(view(V1.version, server_path=AGENT), known=QEMU) == [
        StartProxy("vhu0", V1, QEMU), Redirect("vhu0", QEMU, AGENT)]


def test_a_lost_path_is_said_on_the_row_never_guessed() -> None:
    (write,) = actions(view(None, server_path=AGENT))
    assert isinstance(write, WriteStatus) and write.status.kind is StatusKind.FAILED
    (write,) = actions(view(V1.version, server_path=None))
    assert isinstance(write, WriteStatus) and write.status.kind is StatusKind.WAITING


def test_qemus_socket_moved_by_the_operator_restarts_and_redirects_again() -> None:
    row = view(V1.version, server_path="/run/qemu/new.sock", frontend=QEMU)
    assert actions(row, RunningProxy(V1.version, QEMU)) == [
        StopProxy("vhu0", "QEMU's socket moved"),
        StartProxy("vhu0", V1, "/run/qemu/new.sock"),
        Redirect("vhu0", "/run/qemu/new.sock", AGENT)]


def test_ovs_server_ports_are_refused_with_the_reason() -> None:
    (write,) = actions(view(V1.version, kind="dpdkvhostuser", server_path=None))
    assert isinstance(write, WriteStatus) and write.status.kind is StatusKind.REFUSED
    assert "dpdkvhostuser is not supported" in write.status.reason
    assert actions(view(kind="dpdkvhostuser")) == []


def test_gone_interfaces_stop_their_proxies_and_others_are_independent() -> None:
    rows = [view(V1.version, name="vhu0"),
            view(None, server_path="/run/qemu/vhu1.sock", name="vhu1")]
    running = {"vhu2": RunningProxy(V1.version, "/run/qemu/vhu2.sock")}
    found = reconcile(rows, PUBLISHED, running, lambda name: f"/run/vc/{name}.sock")
    assert found == [StartProxy("vhu0", V1, QEMU),
                     Redirect("vhu0", QEMU, "/run/vc/vhu0.sock"),
                     StopProxy("vhu2", "the interface is gone")]


def test_status_text() -> None:
    assert str(Status(StatusKind.RUNNING)) == "running"
    assert str(Status(StatusKind.REFUSED, "why")) == "refused: why"
