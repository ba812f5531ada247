"""What the OVSDB client costs, and what querying a fleet of hosts through it saves.

Two measurements, against real standalone ovsdb-servers started here:

* **round trip**: one ``select`` of ``Open_vSwitch external_ids`` on one
  open connection, over the Unix socket and over TCP on 127.0.0.1, timed one
  by one (median and p99, microseconds), and the same request written and
  read back by bare asyncio streams on the Unix socket (the floor);
* **versions over a fleet**: ``HOSTS`` servers (default 200), each
  published with the shipped catalog, asked for their published versions
  four ways, round-robin, ``--repeat`` times:

  - ``vhostcompat versions`` in-process (``manager.versions``: every host
    connected, schema-checked, read and closed concurrently), and the same
    with the store asking ``get_schema`` on connect (as it did before it
    knew its column types);
  - the ``vhostcompat versions HOST...`` command as a process (the same,
    plus Python's start-up);
  - ``ovs-vsctl --no-wait get Open_vSwitch . external_ids:vhost-compat-versions``
    once per host, one after the other;
  - the same ``ovs-vsctl`` calls, 8 at a time;
  - and, as the floor of the machine, bare asyncio streams sending what the
    store sends (the known-schema checks and the read of the Open_vSwitch
    row) and reading until the answer, with no checks of ours and no
    decoding; and the same with ``get_schema`` and the read instead (what
    the schema costs the servers).

  Ratios are of medians, sequential (target at least 20) and 8-parallel
  (target at least 5) over the in-process query; every variant's answers
  are checked to agree before any figure is reported.

    python -m bench.bench_ovsdb [--hosts 200] [--repeat 3] [--round-trips 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat import manager
from vhostcompat.errors import InputError
from vhostcompat.hoststore import OvsdbHostStore
from vhostcompat.hoststore.ovsdb import REQUIRED_COLUMNS
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.ovsdb import OvsdbServer, run_command, run_ovsdb_server, run_ovsdb_servers
from vhostcompat.ovsdb import OvsdbClient, Select
from vhostcompat.ovsdb.client import known_schema_checks
from vhostcompat.profiles import load_catalog_or_default

HOSTS = 200
ROUND_TRIPS = 2000
PARALLEL = 8
TARGET_SEQUENTIAL, TARGET_PARALLEL = 20.0, 5.0
IN_PROCESS, WITH_SCHEMA, COMMAND, SEQUENTIAL, PARALLEL_8, FLOOR, FLOOR_NO_SCHEMA = (
    "vhostcompat (in-process)", "vhostcompat, get_schema", "vhostcompat versions (process)",
    "ovs-vsctl sequential", f"ovs-vsctl {PARALLEL} at a time", "bare asyncio (floor)",
    "bare asyncio, no get_schema")
VARIANTS = (IN_PROCESS, WITH_SCHEMA, COMMAND, SEQUENTIAL, PARALLEL_8, FLOOR, FLOOR_NO_SCHEMA)
Answers = dict[str, tuple[str, ...]]


# -- one round trip ----------------------------------------------------------------------

async def round_trips(remote: str, count: int) -> list[float]:
    """``count`` select round trips on one connection, each in microseconds."""
    async with OvsdbClient(remote, reconnect=False) as client:
        select = Select("Open_vSwitch", (), ["external_ids"])
        for _ in range(min(count, 100)):  # warm up: schema tables parsed, buffers sized
            await client.transact(select)
        samples = []
        for _ in range(count):
            started = time.perf_counter_ns()
            await client.transact(select)
            samples.append((time.perf_counter_ns() - started) / 1e3)
        return samples


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latency(samples: Sequence[float]) -> dict[str, float]:
    return {"median_us": round(statistics.median(samples), 1),
            "p99_us": round(percentile(samples, 0.99), 1),
            "min_us": round(min(samples), 1), "samples": len(samples)}


async def bare_round_trips(path: Path, count: int) -> list[float]:
    """The same select, by hand on a bare stream: what the machine allows."""
    request = json.dumps({"method": "transact", "params": [
        "Open_vSwitch", {"op": "select", "table": "Open_vSwitch", "where": [],
                         "columns": ["external_ids"]}], "id": 1}).encode()
    reader, writer = await asyncio.open_unix_connection(str(path))
    samples = []
    try:
        for index in range(count + min(count, 100)):
            started = time.perf_counter_ns()
            writer.write(request)
            received = b""
            while not received.endswith(b"}"):
                received += await reader.read(65536)
            if index >= min(count, 100):
                samples.append((time.perf_counter_ns() - started) / 1e3)
    finally:
        writer.close()
        await writer.wait_closed()
    return samples


async def measure_round_trips(run_dir: Path, count: int) -> dict[str, Any]:
    async with run_ovsdb_server(run_dir, "round-trip", tcp=True) as server:
        assert server.tcp_remote is not None
        unix = await round_trips(server.remote, count)
        tcp = await round_trips(server.tcp_remote, count)
        bare = await bare_round_trips(server.socket_path, count)
    return {"unix": latency(unix), "tcp": latency(tcp), "bare_unix": latency(bare)}


# -- versions over a fleet ---------------------------------------------------------------

def vsctl_versions(output: str) -> tuple[str, ...]:
    """What ``ovs-vsctl get ... external_ids:vhost-compat-versions`` printed, as versions."""
    return tuple(output.strip().strip('"').split(","))


async def vsctl_get(server: OvsdbServer) -> tuple[str, ...]:
    return vsctl_versions(await server.vsctl(
        "get", "Open_vSwitch", ".", "external_ids:vhost-compat-versions"))


async def query_in_process(servers: Sequence[OvsdbServer]) -> Answers:
    report = await manager.versions([server.remote for server in servers])
    return {host.address: host.versions for host in report.hosts}


async def query_with_schema(servers: Sequence[OvsdbServer]) -> Answers:
    known, OvsdbHostStore.known_schema = OvsdbHostStore.known_schema, None
    try:
        return await query_in_process(servers)
    finally:
        OvsdbHostStore.known_schema = known


async def query_command(servers: Sequence[OvsdbServer]) -> Answers:
    output = await run_command([sys.executable, "-m", "vhostcompat.cli", "versions",
                                *(server.remote for server in servers)], timeout=120.0)
    answers: Answers = {}
    for line in output.splitlines():
        address, _, versions = line.partition(": ")
        answers[address] = tuple(versions.split(", "))
    return answers


async def query_sequential(servers: Sequence[OvsdbServer]) -> Answers:
    return {server.remote: await vsctl_get(server) for server in servers}


async def query_parallel(servers: Sequence[OvsdbServer]) -> Answers:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(server: OvsdbServer) -> tuple[str, tuple[str, ...]]:
        async with gate:
            return server.remote, await vsctl_get(server)

    return dict(await asyncio.gather(*(one(server) for server in servers)))


def bare_requests(schema: bool = True) -> bytes:
    """What the OVSDB store sends for ``versions``, by hand: ``get_schema`` and its read
    (or, as it does now, no get_schema: the known-schema checks, then the read)."""
    read = [Select("Open_vSwitch", (), ("_uuid", "external_ids")).to_json()]
    if schema:
        return (json.dumps({"method": "get_schema", "params": ["Open_vSwitch"],
                            "id": "schema"})
                + json.dumps({"method": "transact", "params": ["Open_vSwitch", *read],
                              "id": 1})).encode()
    checks = [check.to_json() for check in known_schema_checks(REQUIRED_COLUMNS)]
    return json.dumps({"method": "transact", "params": ["Open_vSwitch", *checks, *read],
                       "id": 1}).encode()


async def query_bare(servers: Sequence[OvsdbServer], schema: bool = True) -> Answers:
    request = bare_requests(schema)

    async def one(server: OvsdbServer) -> tuple[str, tuple[str, ...]]:
        reader, writer = await asyncio.open_unix_connection(str(server.socket_path),
                                                            limit=1 << 22)
        writer.write(request)
        received = b""
        while b'"id":1' not in received:
            chunk = await reader.read(1 << 20)
            if not chunk:
                raise LabError(f"{server.name} closed the connection")
            received += chunk
        writer.close()
        await writer.wait_closed()
        answer = json.loads(received[received.index(b'{"id":1'):])
        [root] = answer["result"][-1]["rows"]  # the read comes after any checks
        return server.remote, vsctl_versions(dict(root["external_ids"][1])[
            "vhost-compat-versions"])

    return dict(await asyncio.gather(*(one(server) for server in servers)))


QUERIES: Mapping[str, Callable[[Sequence[OvsdbServer]], Awaitable[Answers]]] = {
    IN_PROCESS: query_in_process, WITH_SCHEMA: query_with_schema, COMMAND: query_command,
    SEQUENTIAL: query_sequential, PARALLEL_8: query_parallel, FLOOR: query_bare,
    FLOOR_NO_SCHEMA: functools.partial(query_bare, schema=False)}


async def measure_fleet(run_dir: Path, hosts: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per query of every host, per variant, round-robin."""
    catalog = load_catalog_or_default(None)
    expected = tuple(profile.version for profile in catalog.profiles)
    async with run_ovsdb_servers(run_dir, hosts) as servers:
        await asyncio.gather(*(manager.publish(server.remote, catalog) for server in servers))
        timings: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(repeat):
            for variant in VARIANTS:
                started = time.perf_counter()
                answers = await QUERIES[variant](servers)
                timings[variant].append(time.perf_counter() - started)
                wrong = [address for address, versions in answers.items()
                         if versions != expected]
                if len(answers) != hosts or wrong:
                    raise LabError(f"{variant} answered wrongly for {len(wrong)} host(s), "
                                   f"{len(answers)} of {hosts} answered")
    return timings


def fleet_report(timings: Mapping[str, Sequence[float]], hosts: int) -> dict[str, Any]:
    medians = {variant: statistics.median(values) for variant, values in timings.items()}
    base = medians[IN_PROCESS]
    return {
        "hosts": hosts,
        "seconds": {variant: {"median": round(medians[variant], 4),
                              "min": round(min(values), 4), "max": round(max(values), 4),
                              "samples": [round(value, 4) for value in values]}
                    for variant, values in timings.items()},
        "ratio_sequential": round(medians[SEQUENTIAL] / base, 1),
        "ratio_parallel": round(medians[PARALLEL_8] / base, 1),
        "ratio_sequential_with_get_schema": round(medians[SEQUENTIAL] / medians[WITH_SCHEMA], 1),
        "ratio_sequential_vs_process": round(medians[SEQUENTIAL] / medians[COMMAND], 1),
        "ratio_parallel_vs_process": round(medians[PARALLEL_8] / medians[COMMAND], 1),
        "ratio_sequential_vs_floor": round(medians[SEQUENTIAL] / medians[FLOOR_NO_SCHEMA], 1),
        "targets": {"sequential": TARGET_SEQUENTIAL, "parallel": TARGET_PARALLEL},
    }


# -- the command -------------------------------------------------------------------------

async def measure(hosts: int, repeat: int, count: int) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-bench-"))
    try:
        trips = await measure_round_trips(run_dir, count)
        fleet = fleet_report(await measure_fleet(run_dir, hosts, repeat), hosts)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"benchmark": "ovsdb", "repeat": repeat, "round_trip": trips,
            "versions_over_fleet": fleet}


def render(document: Document) -> str:
    trips = document["round_trip"]
    fleet = document["versions_over_fleet"]
    lines = ["select round trip on one connection (us): median / p99",
             *(f"  {kind:<10}{trips[kind]['median_us']:>10.1f} /{trips[kind]['p99_us']:>9.1f}"
               for kind in ("unix", "tcp", "bare_unix")),
             f"versions of {fleet['hosts']} ovsdb-servers, {document['repeat']} run(s) each "
             "(s): median [min-max]"]
    for variant in VARIANTS:
        seconds = fleet["seconds"][variant]
        lines.append(f"  {variant:<32}{seconds['median']:>9.3f} "
                     f"[{seconds['min']:.3f}-{seconds['max']:.3f}]")
    lines += [f"ratio sequential / in-process: {fleet['ratio_sequential']} "
              f"(target >= {TARGET_SEQUENTIAL:g})",
              f"the same with get_schema on connect: {fleet['ratio_sequential_with_get_schema']}",
              f"ratio {PARALLEL} at a time / in-process: {fleet['ratio_parallel']} "
              f"(target >= {TARGET_PARALLEL:g})",
              f"the same against the command as a process: {fleet['ratio_sequential_vs_process']}"
              f" and {fleet['ratio_parallel_vs_process']}",
              f"sequential / the bare floor (no get_schema): "
              f"{fleet['ratio_sequential_vs_floor']}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench_ovsdb", __doc__)
    parser.add_argument("--hosts", type=int, default=HOSTS,
                        help=f"ovsdb-servers in the fleet (default {HOSTS})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fleet queries of each variant (default 3)")
    parser.add_argument("--round-trips", type=int, default=ROUND_TRIPS,
                        help=f"select round trips timed (default {ROUND_TRIPS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def checked_measure() -> Document:
        check_repeat(args.repeat)
        if args.hosts < 1 or args.round_trips < 1:
            raise InputError("--hosts and --round-trips must be at least 1")
        return asyncio.run(measure(args.hosts, args.repeat, args.round_trips))

    return run_bench("bench_ovsdb", checked_measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
