"""``vhostcompat backend``: option checking, and the process's life from start to signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.backend.process import backend_process
from tests.cli.conftest import Cli
from vhostcompat.backend import BackendConfig
from vhostcompat.cli import build_parser
from vhostcompat.cli.backend_commands import config_from
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles import load_default_catalog


def parse_config(*argv: str) -> BackendConfig:
    args = build_parser().parse_args(["backend", "--socket", "/tmp/unused.sock", *argv])
    return config_from(args)


def test_a_profile_selects_the_offer() -> None:
    version = "upstream.ovs-dpdk.v2.6"
    config = parse_config("--profile", version)
    assert config == BackendConfig.from_profile(load_default_catalog().get(version))


def test_features_one_by_one() -> None:
    config = parse_config("--features", "VIRTIO_F_VERSION_1,VIRTIO_NET_F_CSUM|bit 26",
                          "--protocol-features", "MQ,LOG_SHMFD", "--queues", "4",
                          "--max-ring-size", "512")
    assert config.features == (VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VIRTIO_NET_F_CSUM
                               | VirtioFeature.VHOST_F_LOG_ALL
                               | VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)
    assert config.protocol_features == ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD
    assert (config.queue_pairs, config.max_ring_size) == (4, 512)


@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "give --profile VERSION or --features SPEC"),
    (["--profile", "upstream.ovs-dpdk.v2.6", "--features", "0x1"], "not both"),
    (["--profile", "upstream.ovs-dpdk.v2.6", "--queues", "2"],
     "--queues only go with --features"),
    (["--profile", "no.such.version"], "unknown version 'no.such.version'"),
    (["--features", "0x1", "--catalog", "/tmp"], "--catalog only goes with --profile"),
    (["--features", "VIRTIO_F_WARP"], "unknown virtio feature 'VIRTIO_F_WARP'"),
    (["--features", "0x1", "--protocol-features", "TELEPORT"],
     "unknown vhost-user protocol feature 'TELEPORT'"),
    (["--features", "0x1", "--queues", "0"], "must be at least 1"),
    (["--features", "0x1", "--queues", "200"], "queue pairs must be 1..128"),
    (["--features", "0x1", "--max-ring-size", "many"], "not an integer"),
])
def test_bad_options_are_one_line_and_exit_2(cli: Cli, short_dir: Path, argv: list[str],
                                             fragment: str) -> None:
    socket_path = short_dir / "b.sock"
    result = cli("backend", "--socket", str(socket_path), *argv)
    assert result.status == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not socket_path.exists()


def test_a_socket_path_in_use_is_refused(cli: Cli, short_dir: Path) -> None:
    occupied = short_dir / "file"
    occupied.write_text("not a socket")
    result = cli("backend", "--socket", str(occupied), "--features", "0x100000000")
    assert result.status == 2
    assert "exists and is not a socket" in result.stderr
    assert occupied.read_text() == "not a socket"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_backend_runs_until_a_signal_then_exits_0_and_removes_its_socket(
        short_dir: Path, signum: signal.Signals) -> None:
    with backend_process(short_dir, ["--profile", "upstream.ovs-dpdk.v2.7"]) as backend:
        assert backend.socket_path.is_socket()
        assert backend.stop(signum) == 0
        log = backend.log()
        assert f"listening on {backend.socket_path}" in log
        assert "profile upstream.ovs-dpdk.v2.7" in log  # -v shows INFO
        assert "Traceback" not in log
        assert not backend.socket_path.exists()


def test_the_backend_warns_when_migration_would_be_blocked(short_dir: Path) -> None:
    with backend_process(short_dir, ["--features", "VIRTIO_F_VERSION_1"]) as backend:
        assert backend.stop() == 0
        assert "WARNING: migration blocked: lacks VHOST_F_LOG_ALL" in backend.log()
