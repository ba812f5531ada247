"""Benchmark of the manager: fleet-wide select and provision, and targets in memory.

Run from the repository root::

    .venv/bin/python -m bench.bench_manager                 # a table
    .venv/bin/python -m bench.bench_manager --json          # one JSON document
    .venv/bin/python -m bench.bench_manager --hosts 200 --repeat 3 --targets 10000

Side by side, round-robin in one run, over ``--hosts`` local ovsdb-servers
(standalone, vswitch schema, one ``vhu0`` port each, two versions published):

* ``select``: :func:`vhostcompat.manager.select` (every host asked
  concurrently through our OVSDB client), on the event loop the CLI runs it
  on (``manager``: uvloop, :func:`vhostcompat.manager.run`) and on asyncio's
  own (``manager-asyncio``, as an orchestrator's loop may be), each in a
  thread of its own with a new loop, and as an operator runs it,
  ``vhostcompat select HOST...`` as a process (``vhostcompat-cli``: Python's
  start-up and the imports included), against a script's way, one
  ``ovs-vsctl --no-wait --format=json list`` per host in turn (both tables
  in one call), followed by the same selection over what it printed;
* ``provision``: :func:`vhostcompat.manager.provision` (read everywhere,
  then the conditional writes) against a read and an ``ovs-vsctl --no-wait
  set Interface vhu0 options:vhost-compat-version=V`` per host in turn (not
  conditional, not all or nothing: the cheapest a script can be). The
  pinned version alternates with every provision, so each one writes.

The four variants run in a rotated order every round, so that none always
runs right after another's 200 process starts and writes, and the
file systems are synced (untimed) before each variant: every ovsdb-server
writes its database file on each commit, and a variant that ran while the
other's 200 commits were still being flushed took twice as long.

Then ``targets`` over ``--targets`` hosts of published data built in
memory (five publication patterns, as a real fleet has few; two of them
cannot take the guest), from records
to verdicts, no I/O: with equal profiles shared (as decoded once) and with
every host its own copy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat import manager
from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import HostRecord, InterfaceRecord, record_from_rows
from vhostcompat.lab.ovsdb import OvsdbServer, run_command, run_ovsdb_servers
from vhostcompat.profiles import Catalog, CompatProfile, NegotiatedState, parse_catalog_text
from vhostcompat.profiles.catalog import merge_entries

IFACE = "vhu0"
PARALLEL_SETUP = 16
CATALOG = """
[[profile]]
version = "bench.v2"
virtio_features = ["VIRTIO_NET_F_CSUM", "VIRTIO_RING_F_INDIRECT_DESC", "VIRTIO_NET_F_MQ",
                   "VHOST_F_LOG_ALL", "VIRTIO_F_VERSION_1"]
protocol_features = ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK"]
max_queue_pairs = 8
max_ring_size = 1024

[[profile]]
version = "bench.v1"
virtio_features = ["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_MQ", "VHOST_F_LOG_ALL",
                   "VIRTIO_F_VERSION_1"]
protocol_features = ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK"]
max_queue_pairs = 4
max_ring_size = 256
"""
VERSIONS = ("bench.v2", "bench.v1")


def bench_catalog() -> Catalog:
    return merge_entries([parse_catalog_text(CATALOG, "bench")])


async def setup(servers: Sequence[OvsdbServer]) -> None:
    catalog = bench_catalog()
    gate = asyncio.Semaphore(PARALLEL_SETUP)

    async def one(server: OvsdbServer) -> None:
        async with gate:
            await server.vsctl("add-br", "br0", "--", "add-port", "br0", IFACE, "--", "set",
                               "Interface", IFACE, "type=dpdkvhostuserclient")
            await manager.publish(server.remote, catalog)

    await asyncio.gather(*(one(server) for server in servers))


def _documents(text: str) -> list[Any]:
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def _rows(document: Any) -> list[dict[str, Any]]:
    headings = document["headings"]
    return [dict(zip(headings, row, strict=True)) for row in document["data"]]


def _map(value: Any) -> dict[str, str]:
    assert value[0] == "map"
    return {str(key): str(item) for key, item in value[1]}


async def vsctl_read(server: OvsdbServer) -> HostRecord:
    """One host read the way a shell script would: ovs-vsctl, JSON output, parsed."""
    text = await run_command(["ovs-vsctl", f"--db={server.remote}", "--no-wait",
                              "--format=json", "--", "--columns=external_ids", "list",
                              "Open_vSwitch", "--", "--columns=name,options,external_ids",
                              "list", "Interface"])
    root, interfaces = _documents(text)
    rows = {str(row["name"]): (_map(row["options"]), _map(row["external_ids"]))
            for row in _rows(interfaces)}
    return record_from_rows(server.remote, _map(_rows(root)[0]["external_ids"]), rows)


async def vsctl_select(servers: Sequence[OvsdbServer]) -> str | None:
    hosts = [await vsctl_read(server) for server in servers]
    return manager.select_from_records(hosts).selection.version


async def vsctl_provision(servers: Sequence[OvsdbServer], version: str) -> None:
    hosts = [await vsctl_read(server) for server in servers]
    assert manager.select_from_records(hosts, version).selection.version == version
    for server in servers:
        await server.vsctl("set", "Interface", IFACE,
                           f"options:vhost-compat-version={version}")


async def timed(call: Awaitable[object]) -> float:
    start = time.perf_counter()
    await call
    return time.perf_counter() - start


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples)}


def own_loop(runner: Callable[[Coroutine[Any, Any, object]], object],
             coroutine: Coroutine[Any, Any, object]) -> Awaitable[object]:
    """``coroutine`` run to completion on a new event loop of ``runner``'s, in a thread
    (the bench's own loop only waits)."""
    return asyncio.to_thread(runner, coroutine)


LOOPS: dict[str, Callable[[Coroutine[Any, Any, object]], object]] = {
    "manager": manager.run,           # what the CLI runs: uvloop
    "manager-asyncio": asyncio.run,   # asyncio's own loop, as an orchestrator may have
}
# The command an operator runs, as a process: start-up and imports included.
CLI = "vhostcompat-cli"
VARIANTS = (*LOOPS, CLI, "ovs-vsctl")
# Each of ours against ovs-vsctl: the document's key for its ratio.
RATIOS = {"manager": "ratio", "manager-asyncio": "ratio-asyncio", CLI: "ratio-cli"}


async def cli_run(*argv: str) -> None:
    """``vhostcompat ARGV...`` in a child process, which must succeed."""
    await run_command([sys.executable, "-m", "vhostcompat.cli", *argv])


async def measure_fleet(hosts: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="vc-bench-") as directory:
        async with run_ovsdb_servers(Path(directory), hosts) as servers:
            await setup(servers)
            remotes = [server.remote for server in servers]
            samples: dict[str, list[float]] = {
                f"{verb}/{variant}": [] for verb in ("select", "provision")
                for variant in VARIANTS}
            provisions = itertools.count()

            def call(verb: str, variant: str) -> Awaitable[object]:
                if verb == "provision":
                    # The pinned version alternates with every provision, so each
                    # one really changes every host.
                    version = VERSIONS[next(provisions) % 2]
                    if variant == "ovs-vsctl":
                        return vsctl_provision(servers, version)
                    if variant == CLI:
                        return cli_run("provision", "--iface", IFACE, "--prefer", version,
                                       *remotes)
                    return own_loop(LOOPS[variant], manager.provision(remotes, IFACE, version))
                if variant == "ovs-vsctl":
                    return vsctl_select(servers)
                if variant == CLI:
                    return cli_run("select", *remotes)
                return own_loop(LOOPS[variant], manager.select(remotes))

            for round_number in range(repeat):
                # The variants in another order every round, so that none always
                # follows the same one (200 process starts, 200 commits).
                shift = round_number % len(VARIANTS)
                order = VARIANTS[shift:] + VARIANTS[:shift]
                for verb in ("select", "provision"):
                    for variant in order:
                        # Each ovsdb-server writes its database file on every
                        # commit: the other side's 200 commits must not still be
                        # flushing while this one runs (untimed).
                        await asyncio.to_thread(os.sync)
                        samples[f"{verb}/{variant}"].append(await timed(call(verb, variant)))
    result: dict[str, Any] = {name: summary(values) for name, values in samples.items()}
    for verb in ("select", "provision"):
        for variant, label in RATIOS.items():
            result[f"{verb}/{label}"] = (result[f"{verb}/ovs-vsctl"]["median_s"]
                                         / result[f"{verb}/{variant}"]["median_s"])
    return result


def fleet_records(count: int, shared: bool) -> tuple[HostRecord, list[HostRecord]]:
    """A source running vhu0 in bench.v2 with a recorded guest, and ``count`` candidates."""
    catalog = bench_catalog()
    v2, v1 = catalog.get("bench.v2"), catalog.get("bench.v1")
    renamed = CompatProfile("bench.v2-renamed", v2.virtio_features, v2.protocol_features, 8,
                            1024)
    tiny = CompatProfile("bench.v0", VirtioFeature.VIRTIO_F_VERSION_1, v1.protocol_features,
                         1, 256)
    patterns: list[list[CompatProfile]] = [[v2, v1], [v1], [renamed], [tiny], [renamed, v1]]

    def copy(profile: CompatProfile) -> CompatProfile:
        return profile if shared else CompatProfile(
            profile.version, profile.virtio_features, profile.protocol_features,
            profile.max_queue_pairs, profile.max_ring_size)

    def record(address: str, profiles: list[CompatProfile]) -> HostRecord:
        copies = [copy(profile) for profile in profiles]
        return HostRecord(address, tuple(p.version for p in copies),
                          {p.version: p for p in copies}, {})

    guest = NegotiatedState(acked_features=VirtioFeature.VIRTIO_NET_F_CSUM
                            | VirtioFeature.VIRTIO_F_VERSION_1, queue_pairs=1, ring_size=256)
    source = HostRecord("source", ("bench.v2",), {"bench.v2": v2},
                        {IFACE: InterfaceRecord(IFACE, "bench.v2", guest)})
    return source, [record(f"host-{index}", patterns[index % len(patterns)])
                    for index in range(count)]


def measure_targets(count: int, repeat: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, shared in (("shared profiles", True), ("a copy per host", False)):
        source, candidates = fleet_records(count, shared)
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            report = manager.targets_from_records(IFACE, source, candidates)
            samples.append(time.perf_counter() - start)
        assert len(report.targets) == count
        result[label] = {**summary(samples), "compatible": len(report.compatible_hosts)}
    return result


def measure(args: argparse.Namespace) -> Document:
    check_repeat(args.repeat)
    if args.hosts < 2 or args.targets < 1:
        raise InputError("--hosts must be at least 2 and --targets at least 1")
    return {"hosts": args.hosts, "repeat": args.repeat, "targets_hosts": args.targets,
            "fleet": asyncio.run(measure_fleet(args.hosts, args.repeat)),
            "targets": measure_targets(args.targets, args.repeat)}


def render(document: Document) -> str:
    fleet = document["fleet"]
    lines = [f"{document['hosts']} ovsdb-servers, {document['repeat']} rounds "
             "(median / min / max, ms):"]
    for verb in ("select", "provision"):
        for variant in VARIANTS:
            figures = fleet[f"{verb}/{variant}"]
            lines.append(f"  {verb:9} {variant:15} {figures['median_s'] * 1e3:9.1f} "
                         f"{figures['min_s'] * 1e3:9.1f} {figures['max_s'] * 1e3:9.1f}")
        for label in RATIOS.values():
            lines.append(f"  {verb:9} {label:15} {fleet[f'{verb}/{label}']:9.1f}x")
    lines.append(f"targets over {document['targets_hosts']} hosts in memory (ms):")
    for label, figures in document["targets"].items():
        lines.append(f"  {label:16} {figures['median_s'] * 1e3:9.1f} "
                     f"{figures['min_s'] * 1e3:9.1f} {figures['max_s'] * 1e3:9.1f}"
                     f"   ({figures['compatible']} compatible)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("bench_manager", __doc__ or "")
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--targets", type=int, default=10_000)
    args = parser.parse_args(argv)
    return run_bench("bench_manager", lambda: measure(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
