"""The proxy's status: board transitions, the JSON file, the host store row."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.proxy.fakes import NARROW, F, P
from vhostcompat.hoststore import open_host
from vhostcompat.profiles import NegotiatedState
from vhostcompat.proxy import (
    HostStoreSink,
    Negotiated,
    Offer,
    ProxyState,
    ProxyStatus,
    Refusal,
    StatusBoard,
    StatusFile,
    StatusFileError,
    read_status_file,
)
from vhostcompat.vhostuser import FrontendRequest

ACKED = F.VIRTIO_NET_F_CSUM | F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES
RUNNING = Negotiated(ACKED, P.MQ | P.LOG_SHMFD, 1, ((0, 256), (1, 512)), running=True)


def full_status() -> ProxyStatus:
    return ProxyStatus(
        profile="test.narrow", state=ProxyState.RUNNING, detail="all good", interface="vhu0",
        frontend="/run/vhu0.sock (proxy listens)", backend="/run/be.sock (proxy connects)",
        connections=3, backend_features=F(0xD7C66FFCB), offered_features=F(0x140008001),
        acked_features=ACKED, backend_protocol_features=P(0x10CBF),
        offered_protocol_features=P(0xF), acked_protocol_features=P(0x3),
        backend_queue_num=128, offered_queue_num=2, queue_pairs=1,
        ring_sizes={0: 256, 1: 512}, dirty_logging=True,
        refusals=("SET_VRING_NUM (ring 0) refused: ring size 1024 exceeds max_ring_size 256",),
        pid=42, updated=1.5)


def test_status_round_trips_through_json() -> None:
    status = full_status()
    document = json.loads(json.dumps(status.to_json()))
    assert ProxyStatus.from_json(document) == status
    assert document["features"]["acked"] == {
        "hex": "0x140000001",
        "names": ["VIRTIO_NET_F_CSUM", "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1"]}
    assert document["ring_sizes"] == {"0": 256, "1": 512}


@pytest.mark.parametrize(("path", "value", "complaint"), [
    (("state",), "dancing", "unknown state 'dancing'"),
    (("features",), [], "features is not a JSON object"),
    (("features", "acked", "hex"), "zz", "'zz' is not a hex mask"),
    (("queue_pairs",), "1", "queue_pairs"),
    (("connections",), True, "connections"),
    (("ring_sizes",), {"x": 1}, "ring indices"),
])
def test_a_damaged_status_is_refused_naming_the_field(path: tuple[str, ...], value: object,
                                                      complaint: str) -> None:
    document = full_status().to_json()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(StatusFileError, match=complaint):
        ProxyStatus.from_json(document, "here.json")


def test_lines_say_mode_state_features_and_rings() -> None:
    text = "\n".join(full_status().lines())
    assert text.startswith("interface vhu0: mode test.narrow, running (connection 3)")
    assert "withheld: " in text and "VIRTIO_NET_F_HOST_TSO4" in text
    assert "GET_QUEUE_NUM: back-end 128, answered 2" in text
    assert "queue pairs in use: 1; ring sizes: 0:256 1:512" in text
    assert "refused: SET_VRING_NUM" in text


def state_of(board: StatusBoard) -> ProxyState:
    return board.status.state


def test_board_follows_the_connection() -> None:
    async def scenario() -> None:
        board = StatusBoard("test.narrow")
        board.new_connection()
        assert state_of(board) is ProxyState.CONNECTING
        board.set_state(ProxyState.NEGOTIATING)
        board.record_offer(Offer(FrontendRequest.GET_QUEUE_NUM, 128, 2))
        board.record_negotiated(RUNNING)
        status = board.status
        assert status.state is ProxyState.RUNNING
        assert (status.backend_queue_num, status.offered_queue_num) == (128, 2)
        assert status.acked_features == ACKED and status.queue_pairs == 1
        board.record_negotiated(Negotiated(ACKED, None, None, (), running=False))
        assert state_of(board) is ProxyState.STOPPED
        assert board.status.queue_pairs == 1  # the last rings in use are kept
        board.record_refusal(Refusal(FrontendRequest.SET_VRING_NUM, "too big", 0))
        assert state_of(board) is ProxyState.REFUSED
        assert not board.status.state.healthy
        board.new_connection()  # a new connection forgets offers, keeps what was acked
        assert board.status.offered_queue_num is None
        assert board.status.acked_features == ACKED
        assert board.status.connections == 2

    asyncio.run(scenario())


def test_status_file_is_written_in_the_background_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "vhu0.json"

    async def scenario() -> None:
        board = StatusBoard("test.narrow", interface="vhu0", sinks=[StatusFile(path)])
        board.start()
        board.set_state(ProxyState.NEGOTIATING)
        board.record_negotiated(RUNNING)
        await board.flush()
        assert read_status_file(path).state is ProxyState.RUNNING
        board.set_state(ProxyState.EXITED, "bye")
        await board.close()

    asyncio.run(scenario())
    status = read_status_file(path)
    assert (status.state, status.detail, status.interface) == (ProxyState.EXITED, "bye", "vhu0")
    assert [item.name for item in tmp_path.iterdir()] == ["vhu0.json"]  # no temporary left


def test_reading_a_missing_or_corrupt_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(StatusFileError, match="no such file"):
        read_status_file(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StatusFileError, match="not JSON"):
        read_status_file(tmp_path / "bad.json")


def test_a_failing_sink_is_logged_and_does_not_stop_publishing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.json"

    async def scenario() -> None:
        board = StatusBoard("test.narrow", sinks=[StatusFile(tmp_path / "no" / "dir.json"),
                                                  StatusFile(good)])
        board.start()
        board.set_state(ProxyState.WAITING)
        await board.close()
        assert board.failures == 1

    asyncio.run(scenario())
    assert read_status_file(good).state is ProxyState.WAITING
    assert any("publishing the status" in record.getMessage() for record in caplog.records)


def test_host_store_sink_records_the_negotiated_state(tmp_path: Path) -> None:
    host = str(tmp_path / "host-a")

    async def scenario() -> None:
        async with open_host(host) as store:
            await store.publish([NARROW])
            await store.assign("vhu0", NARROW.version)
        sink = HostStoreSink(host, "vhu0")
        status = full_status()
        await sink.publish(status)
        async with open_host(host) as store:
            record = (await store.read()).interface("vhu0")
        assert record.version == NARROW.version
        assert record.negotiated == NegotiatedState(
            acked_features=ACKED, acked_protocol_features=P(0x3), queue_pairs=1,
            ring_size=512, status="running")

    asyncio.run(scenario())
