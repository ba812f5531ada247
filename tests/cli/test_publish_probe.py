"""publish --probe SOCKET: any listening vhost-user backend decides what is published.

The reference backend (its own process) plays an "OVS 2.6" host: it offers
exactly upstream.ovs-dpdk.v2.6. Ring sizes cannot be asked over vhost-user,
so without ``--max-ring-size`` the profiles that declare one are not
promised at all (exit 1, nothing written); with it, only v2.6 is published
and v2.7 is dropped naming VIRTIO_RING_F_INDIRECT_DESC.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli
from tests.helpers import run_bounded, run_cli_process
from vhostcompat.lab.commands import run_reference_backend

CATALOG = Path(__file__).parents[2] / "src/vhostcompat/catalogs/upstream-proposal.toml"
V27, V26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6"



def test_publish_only_what_a_listening_backend_honours(short_dir: Path) -> None:
    host = short_dir / "host"

    async def play() -> None:
        async with run_reference_backend(short_dir, "old-host", ["--profile", V26]) as backend:
            probe = ["publish", "--db", str(host), "--catalog", str(CATALOG),
                     "--probe", str(backend.socket_path), "--json"]
            status, out, err = await run_cli_process(*probe)
            assert status == 1 and out == "", (out, err)
            assert "honours none of the profiles, nothing published" in err
            assert "max_ring_size" in err and len(err.strip().splitlines()) == 1
            assert not host.exists()
            status, out, err = await run_cli_process(*probe, "--max-ring-size", "1024")
            assert status == 0, err
            document = json.loads(out)
            assert document["published"] == document["versions"] == [V26]
            dropped = {entry["version"]: entry["missing"] for entry in document["dropped"]}
            assert dropped[V27] == ["VIRTIO_RING_F_INDIRECT_DESC (bit 28)"]
            status, out, _ = await run_cli_process("versions", str(host))
            assert (status, out.strip()) == (0, f"{host}: {V26}")

    run_bounded(play())


def test_probe_ovs_needs_an_ovsdb_remote_and_probes_exclude_each_other(
        cli: Cli, tmp_path: Path) -> None:
    result = cli("publish", "--db", str(tmp_path / "host"), "--probe-ovs")
    assert result.status == 2 and "--probe-ovs needs an OVSDB remote" in result.stderr
    result = cli("publish", "--db", str(tmp_path / "host"), "--probe-ovs", "--probe", "x.sock")
    assert result.status == 2 and "not allowed with argument" in result.stderr
    result = cli("publish", "--db", str(tmp_path / "host"), "--probe", "x", "--max-ring-size",
                 "0")
    assert result.status == 2 and "--max-ring-size must be positive" in result.stderr
    assert not (tmp_path / "host").exists()
