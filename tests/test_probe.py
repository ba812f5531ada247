"""``vhostcompat probe`` against the reference backend: it reports what it was told.

The reference backend runs in this process (to check what the probe left
behind on its connection) or as its own process (to run the command line
as a user would). testpmd's answers are checked in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.backend.process import backend_process
from tests.cli.conftest import Cli, cli, no_system_catalog
from tests.helpers import run_bounded
from vhostcompat.backend import BackendConfig, serve_backend
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.lab.process import wait_until
from vhostcompat.probe import ProbeError, ProbeResult, migration_blockers, probe
from vhostcompat.profiles import load_default_catalog
from vhostcompat.transport import SocketPathError

F = VirtioFeature
P = ProtocolFeature
TIMEOUT = 10.0
FIXTURES = (cli, no_system_catalog)  # shared with tests/cli

CONFIGS = {
    "profile v2.7": BackendConfig.from_profile(
        load_default_catalog().get("upstream.ovs-dpdk.v2.7")),
    "no protocol features": BackendConfig.from_options(
        F.VIRTIO_F_VERSION_1 | F.VIRTIO_NET_F_CSUM | F.VIRTIO_RING_F_INDIRECT_DESC),
    "protocol features without MQ": BackendConfig.from_options(
        F.VIRTIO_F_VERSION_1 | F.VHOST_F_LOG_ALL | F.VHOST_USER_F_PROTOCOL_FEATURES,
        P.LOG_SHMFD | P.REPLY_ACK),
    "unknown bits and many queues": BackendConfig.from_options(
        F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES | F(1 << 45),
        P.MQ | P(1 << 30), queue_pairs=77),
}


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, TIMEOUT)


@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_the_probe_reports_exactly_what_the_backend_was_told(short_dir: Path,
                                                               label: str) -> None:
    config = CONFIGS[label]

    async def scenario() -> None:
        async with serve_backend(config, short_dir / "v.sock") as server:
            result = await probe(server.socket_path, timeout=5)
            assert result.features == config.features
            offers_protocol = F.VHOST_USER_F_PROTOCOL_FEATURES in config.features
            assert result.protocol_features == (
                config.protocol_features if offers_protocol else None)
            mq = P.MQ in config.protocol_features
            assert result.queue_pairs == (config.queue_pairs if mq else None)
            assert result.migration_blockers == migration_blockers(
                config.features, config.protocol_features if offers_protocol else None)
            await wait_until(lambda: len(server.closed) == 1, 5.0,
                             "the backend to notice the probe closing")
            # Left unconfigured: no owner, no features acked, no memory, no ring.
            device = server.closed[0].device
            assert server.closed[0].reason is None
            assert not device.session.owner
            assert device.session.acked_features is None
            assert device.session.protocol_features == (P.MQ if mq else P(0))
            assert not device.session.rings and not device.queues

    run(scenario())


def test_set_owner_is_sent_only_when_asked(short_dir: Path) -> None:
    async def scenario() -> None:
        async with serve_backend(CONFIGS["profile v2.7"], short_dir / "v.sock") as server:
            result = await probe(server.socket_path, set_owner=True)
            assert result.owner_set
            await wait_until(lambda: len(server.closed) == 1, 5.0,
                             "the backend to notice the probe closing")
            assert server.closed[0].device.session.owner

    run(scenario())



def test_report_lines_and_json() -> None:
    features = F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES | F(1 << 45)
    result = ProbeResult("/x.sock", features, P.MQ, 3)
    lines = result.lines()
    assert lines[0] == "socket: /x.sock"
    assert f"features: {(1 << 45) + (1 << 32) + (1 << 30):#x}" in lines
    assert "  VIRTIO_F_VERSION_1 (bit 32)" in lines and "  bit 45" in lines
    assert "protocol features: 0x1" in lines and "  MQ (bit 0)" in lines
    assert "queue pairs: 3" in lines
    assert lines[-1] == ("migration: blocked: lacks VHOST_F_LOG_ALL (no dirty page logging); "
                         "lacks LOG_SHMFD (the dirty log cannot be shared)")
    document = result.to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["features"] == {"mask": f"{int(features):#x}", "names": [
        "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1", "bit 45"]}
    assert document["migration"] == {"ready": False, "blockers": result.migration_blockers}
    bare = ProbeResult("/y.sock", F.VIRTIO_F_VERSION_1, None, None)
    assert "protocol features: not offered (no VHOST_USER_F_PROTOCOL_FEATURES)" in bare.lines()
    assert "queue pairs: not reported (no MQ protocol feature)" in bare.lines()


def test_migration_readiness_names_what_is_missing() -> None:
    ready = F.VHOST_F_LOG_ALL | F.VHOST_USER_F_PROTOCOL_FEATURES
    assert migration_blockers(ready, P.LOG_SHMFD) == []
    assert migration_blockers(ready, P.MQ) == ["lacks LOG_SHMFD (the dirty log cannot be shared)"]
    assert migration_blockers(F.VHOST_F_LOG_ALL, None) == [
        "lacks VHOST_USER_F_PROTOCOL_FEATURES (so no LOG_SHMFD)"]


def test_the_command_prints_names_and_json_from_a_backend_process(cli: Cli,
                                                                    short_dir: Path) -> None:
    options = ["--features", "VIRTIO_F_VERSION_1,VIRTIO_NET_F_MRG_RXBUF,VHOST_F_LOG_ALL,"
               "VHOST_USER_F_PROTOCOL_FEATURES", "--protocol-features", "MQ,LOG_SHMFD,RARP",
               "--queues", "4"]
    with backend_process(short_dir, options) as backend:
        text = cli("probe", str(backend.socket_path))
        document = cli("probe", str(backend.socket_path), "--json", "--set-owner")
        assert backend.stop() == 0
    assert text.status == 0, text.stderr
    assert "  VIRTIO_NET_F_MRG_RXBUF (bit 15)" in text.stdout.splitlines()
    assert "protocol features: 0x7" in text.stdout
    assert "queue pairs: 4" in text.stdout
    assert text.stdout.splitlines()[-1] == "migration: ready"
    assert document.status == 0, document.stderr
    parsed = json.loads(document.stdout)
    offered = (F.VIRTIO_F_VERSION_1 | F.VIRTIO_NET_F_MRG_RXBUF | F.VHOST_F_LOG_ALL
               | F.VHOST_USER_F_PROTOCOL_FEATURES)
    assert parsed["features"]["mask"] == f"{int(offered):#x}"
    assert parsed["protocol_features"]["names"] == ["MQ", "LOG_SHMFD", "RARP"]
    assert parsed["queue_pairs"] == 4 and parsed["owner_set"] is True
    assert parsed["migration"] == {"ready": True, "blockers": []}


def test_no_backend_is_exit_2_at_once(cli: Cli, short_dir: Path) -> None:
    started = time.monotonic()
    result = cli("probe", str(short_dir / "nobody.sock"))
    assert result.status == 2
    assert result.stderr.splitlines() == [
        f"vhostcompat: cannot connect to {short_dir / 'nobody.sock'}: "
        "No such file or directory (1 attempt)"]
    assert time.monotonic() - started < 2


def test_a_backend_that_never_answers_times_out(cli: Cli, short_dir: Path) -> None:
    path = short_dir / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # the kernel accepts; nobody ever reads
        started = time.monotonic()
        result = cli("probe", str(path), "--timeout", "0.3")
    assert result.status == 2
    assert result.stderr.strip() == (f"vhostcompat: probe of {path}: GET_FEATURES: "
                                     "no answer within 0.3s")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("answer", "fragment"), [
    (b"", "GET_FEATURES: the backend closed the connection instead of answering"),
    # A reply header for GET_PROTOCOL_FEATURES while GET_FEATURES is owed.
    (bytes.fromhex("0f000000 05000000 08000000") + bytes(8),
     "GET_FEATURES: GET_PROTOCOL_FEATURES: reply while the reply to GET_FEATURES is owed"),
    (bytes.fromhex("01000000 05000000 04000000") + bytes(4), "payload size 4 does not fit"),
])
def test_a_backend_answering_nonsense_is_refused_with_the_reason(
        short_dir: Path, answer: bytes, fragment: str) -> None:
    async def scenario() -> None:
        async def answer_once(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(12)
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer_once, short_dir / "odd.sock")
        async with server:
            with pytest.raises(ProbeError) as caught:
                await probe(short_dir / "odd.sock", timeout=5)
        assert fragment in str(caught.value), str(caught.value)
        assert str(caught.value).startswith(f"probe of {short_dir / 'odd.sock'}: GET_FEATURES")

    run(scenario())


def test_a_path_that_is_not_a_socket_is_refused(short_dir: Path) -> None:
    plain = short_dir / "plain"
    plain.write_text("")

    async def scenario() -> None:
        with pytest.raises(SocketPathError, match="is not a socket"):
            await probe(plain)

    run(scenario())


def test_a_non_positive_timeout_is_bad_input(cli: Cli, short_dir: Path) -> None:
    result = cli("probe", str(short_dir / "x.sock"), "--timeout", "0")
    assert result.status == 2 and "--timeout must be positive" in result.stderr
