"""The fleet database against asking every host: select, provision, registration, recovery.

Against real ovsdb-servers started here: a 3-member Raft cluster on 127.0.0.1
ports, and (for the fan-out) ``--hosts`` standalone per-host ovsdb-servers
with the vswitch schema, each published with the same versions as its fleet
row. Side by side in one run:

* **select over N hosts**, round-robin, ``--repeat`` times:
  ``manager.select`` with the fleet as its record source (one read of the
  fleet database) against ``manager.select`` fanning out to the N per-host
  servers (connect, schema, read, close each; 64 at a time, the default);
* **provision over N hosts** (one interface, a fresh one per run): the fleet
  (the interface records of all hosts written in one transaction) against
  the fan-out (each host's own database, conditional writes); the measurement
  behind "where provisioning writes" in the README;
* **registration rate** (hosts per second) into the cluster through
  :func:`vhostcompat.fleet.register` (the agent's path): 100 hosts per
  transaction, and one per transaction (as N agents would, sequentially);
* **recovery after leader loss** (``--kills`` times): a client reads the
  fleet in a loop; the leader is SIGKILLed; the time from the kill to the
  client's next successful read (reconnected to the new leader), then the
  member is restarted and rejoins before the next kill.

    python -m bench.bench_fleet [--hosts 1000] [--repeat 3] [--kills 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat import manager
from vhostcompat.errors import InputError
from vhostcompat.fleet import FleetSession, Registration, register
from vhostcompat.fleet.records import read_fleet
from vhostcompat.fleet.source import FleetRecords
from vhostcompat.lab.fleet import FleetCluster, run_fleet_cluster
from vhostcompat.lab.ovsdb import OvsdbServer, run_ovsdb_servers
from vhostcompat.profiles import CompatProfile, load_catalog_or_default

HOSTS = 1000
REPEAT = 3
KILLS = 5
BATCH = 100
SINGLE = 200  # hosts registered one per transaction
# Hosts are registered once, at the start, and no agent keeps their heartbeats fresh
# while the fan-out runs: the stale rule is not what is measured here.
STALE_AFTER = 3600.0
FLEET, FAN_OUT = "fleet database (one read)", "fan-out to every host"


def stats(samples: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 4), "min": round(min(samples), 4),
            "max": round(max(samples), 4)}


def version_lists() -> list[list[CompatProfile]]:
    profiles = list(load_catalog_or_default(None).profiles)
    return [profiles[:2], profiles[1:3]]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def publish_hosts(servers: Sequence[OvsdbServer], lists: list[list[CompatProfile]]
                        ) -> None:
    gate = asyncio.Semaphore(32)

    async def one(index: int, server: OvsdbServer) -> None:
        async with gate:
            catalog = load_catalog_or_default(None)
            await manager.publish(server.remote, catalog.only(
                [profile.version for profile in lists[index % 2]]))

    await asyncio.gather(*(one(index, server) for index, server in enumerate(servers)))


async def registration_rate(cluster: FleetCluster, hosts: int,
                            lists: list[list[CompatProfile]]) -> dict[str, float]:
    batched = [Registration.of(f"h{index}", "", lists[index % 2], "bench")
               for index in range(hosts)]
    single = [Registration.of(f"s{index}", "", lists[index % 2], "bench")
              for index in range(SINGLE)]
    async with FleetSession(cluster.address) as session:
        start = time.perf_counter()
        for offset in range(0, hosts, BATCH):
            await register(session, batched[offset:offset + BATCH])
        batch_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for registration in single:
            await register(session, [registration])
        single_seconds = time.perf_counter() - start
    return {"batched_hosts_per_s": round(hosts / batch_seconds),
            "single_hosts_per_s": round(SINGLE / single_seconds)}


async def recovery(cluster: FleetCluster, kills: int) -> list[float]:
    """Seconds from the leader's SIGKILL to the client's next successful read."""
    samples: list[float] = []
    for _ in range(kills):
        async with FleetSession(cluster.address) as session:
            await read_fleet(session, ["h0"], stale_after=STALE_AFTER)
            leader = await cluster.wait_leader()
            start = time.perf_counter()
            await cluster.kill(leader)
            # The read reconnects to the new leader underneath.
            await read_fleet(session, ["h0"], stale_after=STALE_AFTER)
            samples.append(time.perf_counter() - start)
        await cluster.restart(leader)
        await cluster.wait_connected(leader)
    return samples


async def measure(hosts: int, repeat: int, kills: int) -> Document:
    run_dir = Path(tempfile.mkdtemp(prefix="bfl-", dir="/tmp"))
    lists = version_lists()
    names = [f"h{index}" for index in range(hosts)]
    try:
        async with run_fleet_cluster(run_dir / "fleet") as cluster, \
                run_ovsdb_servers(run_dir, hosts, prefix="host") as servers:
            rates = await registration_rate(cluster, hosts, lists)
            await publish_hosts(servers, lists)
            remotes = [server.remote for server in servers]
            select_seconds: dict[str, list[float]] = {FLEET: [], FAN_OUT: []}
            provision_seconds: dict[str, list[float]] = {FLEET: [], FAN_OUT: []}
            for run in range(repeat):
                select_seconds[FLEET].append(await timed(lambda: manager.select(
                    names, records=FleetRecords(cluster.address, stale_after=STALE_AFTER))))
                select_seconds[FAN_OUT].append(await timed(lambda: manager.select(remotes)))
                interface = f"vhu{run}"
                await add_interfaces(servers, interface)
                provision_seconds[FLEET].append(await timed(functools.partial(
                    manager.provision, names, interface,
                    records=FleetRecords(cluster.address, (interface,), STALE_AFTER))))
                provision_seconds[FAN_OUT].append(await timed(functools.partial(
                    manager.provision, remotes, interface)))
            answers = {(await manager.select(names, records=FleetRecords(
                cluster.address, stale_after=STALE_AFTER))).selection.version,
                (await manager.select(remotes)).selection.version}
            if len(answers) != 1:
                raise InputError(f"the two ways disagree: {answers}")
            recovered = await recovery(cluster, kills)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    select_stats = {variant: stats(values) for variant, values in select_seconds.items()}
    provision_stats = {variant: stats(values) for variant, values in provision_seconds.items()}
    return {"hosts": hosts, "repeat": repeat, "select_seconds": select_stats,
            "select_ratio": round(select_stats[FAN_OUT]["median"]
                                  / select_stats[FLEET]["median"], 1),
            "provision_seconds": provision_stats,
            "provision_ratio": round(provision_stats[FAN_OUT]["median"]
                                     / provision_stats[FLEET]["median"], 1),
            "registration": rates, "recovery_seconds": stats(recovered),
            "recovery_samples": [round(sample, 3) for sample in recovered]}


async def add_interfaces(servers: Sequence[OvsdbServer], interface: str) -> None:
    """The port provisioning needs on every per-host database (the fleet needs none)."""
    gate = asyncio.Semaphore(32)

    async def one(server: OvsdbServer) -> None:
        async with gate:
            await server.vsctl("--may-exist", "add-br", "br0", "--", "add-port", "br0",
                               interface, "--", "set", "Interface", interface,
                               "type=dpdkvhostuserclient")

    await asyncio.gather(*(one(server) for server in servers))


def render(document: Document) -> str:
    lines = [f"{document['hosts']} hosts, {document['repeat']} run(s) each (s): "
             "median [min-max]"]
    for what in ("select", "provision"):
        lines.append(f"{what}:")
        for variant, seconds in document[f"{what}_seconds"].items():
            lines.append(f"  {variant:<28}{seconds['median']:>9.3f} "
                         f"[{seconds['min']:.3f}-{seconds['max']:.3f}]")
        lines.append(f"  fan-out / fleet: {document[f'{what}_ratio']}")
    rates = document["registration"]
    recovered = document["recovery_seconds"]
    lines += [f"registration: {rates['batched_hosts_per_s']} hosts/s ({BATCH} per "
              f"transaction), {rates['single_hosts_per_s']} hosts/s (one per transaction)",
              f"recovery after the leader's SIGKILL (client-observed, s): median "
              f"{recovered['median']} [{recovered['min']}-{recovered['max']}] over "
              f"{len(document['recovery_samples'])} kills"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench_fleet", __doc__)
    parser.add_argument("--hosts", type=int, default=HOSTS,
                        help=f"hosts (fleet rows and per-host ovsdb-servers; default {HOSTS})")
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help=f"runs of each variant, round-robin (default {REPEAT})")
    parser.add_argument("--kills", type=int, default=KILLS,
                        help=f"leader SIGKILLs for the recovery time (default {KILLS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def checked_measure() -> Document:
        check_repeat(args.repeat)
        if args.hosts < 2 or args.kills < 1:
            raise InputError("--hosts must be at least 2 and --kills at least 1")
        return asyncio.run(measure(args.hosts, args.repeat, args.kills))

    return run_bench("bench_fleet", checked_measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())


