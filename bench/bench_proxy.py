"""What the enforcement proxy costs: direct vs through the proxy, side by side, one run.

Three measurements, each taken round-robin between the direct and the
proxied set-up so that drift of the machine hits both alike:

* **start**: QEMU spawn to vhost running (bench.bench_start's phases) with
  DPDK testpmd directly, and with testpmd behind ``vhostcompat proxy`` (a
  child process, as deployed, in the testpmd's own version); the ratio of
  the medians (target: at most 1.10);
* **migration**: two hosts (testpmd + QEMU, a qtest guest at DRIVER_OK),
  migrated from one to the other; QEMU's reported ``downtime`` and
  ``total-time``, direct vs with both interfaces behind proxies (target: no
  measurable downtime increase);
* **control messages**: GET_FEATURES round trips per second between two
  in-process peers, over a socket pair directly and through a
  :class:`~vhostcompat.proxy.Relay` in the same event loop (each round trip
  is two messages through the proxy).

    python -m bench.bench_proxy [--repeat 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.bench_start import PHASES, Sample, compare, dpdk_testpmd_backend, summarise
from bench.common import (
    BenchBackend,
    Document,
    bench_backend,
    bench_parser,
    check_repeat,
    run_bench,
)
from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyMode
from vhostcompat.lab.hosts import dpdk_testpmd, source_and_destination
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import ProxyPolicy, Relay
from vhostcompat.transport import FdConnection, MessageConnection
from vhostcompat.vhostuser import U64, Channel, FrontendRequest, Message, Role, make_reply

# testpmd's own version: the proxy changes nothing in what is offered, so
# the cost measured is the relaying alone.
MODE = "debian12.dpdk-vhost.v22.11"
VHOST_TIMEOUT = 10.0
SAMPLE_TIMEOUT = 60.0
CONTROL_SECONDS = 2.0
DIRECT, PROXIED = "direct", "proxy"


# testpmd behind ``vhostcompat proxy`` in testpmd's own version; the proxy's socket.
proxied_testpmd_backend = bench_backend(dpdk_testpmd(), ProxyMode(MODE))

START_BACKENDS: dict[str, BenchBackend] = {
    DIRECT: dpdk_testpmd_backend, PROXIED: proxied_testpmd_backend}


# -- migration downtime ------------------------------------------------------------------

async def migrate_once(proxied: bool) -> dict[str, Any]:
    """One migration between two fresh hosts; QEMU's final query-migrate answer."""
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-bench-"))
    uri = f"unix:{run_dir / 'migration.sock'}"
    mode = ProxyMode(MODE) if proxied else None
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT), source_and_destination(
                run_dir, uri, dpdk_testpmd(), dpdk_testpmd(), source_proxy=mode,
                destination_proxy=mode) as (a, b):
            await a.qemu.driver().initialise()
            await qmp.wait_for_vhost_started(a.qemu, VHOST_TIMEOUT)
            result = await qmp.migrate(a.qemu, b.qemu, uri)
        if result.get("status") != "completed":
            raise InputError(f"migration {'through the proxy' if proxied else 'direct'} "
                             f"ended {result.get('status')!r}")
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def measure_migrations(repeat: int) -> dict[str, list[dict[str, int]]]:
    samples: dict[str, list[dict[str, int]]] = {DIRECT: [], PROXIED: []}
    for _ in range(repeat):
        for name, proxied in ((DIRECT, False), (PROXIED, True)):
            result = await migrate_once(proxied)
            samples[name].append({"downtime_ms": int(result["downtime"]),
                                  "total_time_ms": int(result["total-time"])})
    return samples


# -- control messages --------------------------------------------------------------------

async def _answer_get_features(link: MessageConnection) -> None:
    while (message := await link.recv_message()) is not None:
        await link.send_message(make_reply(message, U64(0x1_4400_0000)))


async def _round_trips(link: MessageConnection, seconds: float) -> int:
    request = Message(FrontendRequest.GET_FEATURES)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await link.send_message(request)
        if await link.recv_message() is None:
            raise InputError("the peer closed during the control benchmark")
        count += 1
    return count


async def control_rate(proxied: bool, seconds: float) -> float:
    """GET_FEATURES round trips per second, direct or through one relay."""
    front_peer, front_far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    frontend = MessageConnection(FdConnection(front_peer), Channel.FRONTEND, Role.FRONTEND)
    if proxied:
        back_near, back_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        profile = CompatProfile("bench.all", VirtioFeature(0xFFFF_FFFF_FFFF_FFFF))
        relay = Relay(ProxyPolicy(profile), FdConnection(front_far), FdConnection(back_near))
        relaying: asyncio.Task[Any] = asyncio.create_task(relay.run())
        backend = MessageConnection(FdConnection(back_peer), Channel.FRONTEND, Role.BACKEND)
    else:
        relaying = asyncio.create_task(asyncio.sleep(0))
        backend = MessageConnection(FdConnection(front_far), Channel.FRONTEND, Role.BACKEND)
    answering = asyncio.create_task(_answer_get_features(backend))
    try:
        count = await _round_trips(frontend, seconds)
    finally:
        frontend.close()
        await asyncio.wait_for(asyncio.gather(relaying, answering, return_exceptions=True), 5)
        backend.close()
    return count / seconds


async def measure_control(repeat: int, seconds: float) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {DIRECT: [], PROXIED: []}
    for _ in range(repeat):
        for name, proxied in ((DIRECT, False), (PROXIED, True)):
            rates[name].append(await control_rate(proxied, seconds / repeat))
    return rates


# -- report ------------------------------------------------------------------------------

def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 1)


def _ratio(proxied: float, direct: float) -> float | None:
    return round(proxied / direct, 3) if direct else None


def report(start: Mapping[str, Sequence[Sample]], migrations: Mapping[str, Sequence[Mapping[
        str, int]]], control: Mapping[str, Sequence[float]], repeat: int) -> dict[str, Any]:
    start_medians = {name: {phase: summary["median_ms"]
                            for phase, summary in summarise(samples).items()}
                     for name, samples in start.items()}
    migration_medians = {name: {key: _median([s[key] for s in samples])
                                for key in ("downtime_ms", "total_time_ms")}
                         for name, samples in migrations.items()}
    # QEMU's downtime under TCG comes in steps of ~40 ms: the mean says more
    # than the median about a shift of a few milliseconds.
    downtime_means = {name: round(statistics.mean(s["downtime_ms"] for s in samples), 1)
                      for name, samples in migrations.items()}
    control_medians = {name: _median(rates) for name, rates in control.items()}
    return {
        "benchmark": "vhostcompat proxy: direct vs through the proxy",
        "repeat": repeat,
        "start_ms": {"median": start_medians,
                     "ratio": {phase: _ratio(start_medians[PROXIED][phase],
                                             start_medians[DIRECT][phase]) for phase in PHASES},
                     "samples": {name: [sample.milliseconds() for sample in samples]
                                 for name, samples in start.items()}},
        "migration_ms": {"median": migration_medians,
                         "downtime_mean": downtime_means,
                         "downtime_difference": {
                             "median": round(migration_medians[PROXIED]["downtime_ms"]
                                             - migration_medians[DIRECT]["downtime_ms"], 1),
                             "mean": round(downtime_means[PROXIED] - downtime_means[DIRECT],
                                           1)},
                         "samples": {name: list(samples) for name, samples in
                                     migrations.items()}},
        "control_round_trips_per_s": {
            "median": control_medians,
            "messages_per_s_through_proxy": round(2 * control_medians[PROXIED]),
            "samples": {name: [round(rate) for rate in rates] for name, rates in control.items()}},
    }


def render(document: Document) -> str:
    start = document["start_ms"]
    migration = document["migration_ms"]
    control = document["control_round_trips_per_s"]
    lines = [f"vhostcompat proxy vs direct, {document['repeat']} run(s) each (medians)",
             f"{'':<28}{'direct':>12}{'proxy':>12}{'ratio':>9}"]
    for phase in PHASES:
        ratio = start["ratio"][phase]
        lines.append(f"{'start to ' + phase + ' (ms)':<28}{start['median'][DIRECT][phase]:>12.1f}"
                     f"{start['median'][PROXIED][phase]:>12.1f}"
                     f"{ratio if ratio is not None else float('nan'):>9.3f}")
    for key, label in (("downtime_ms", "migration downtime (ms)"),
                       ("total_time_ms", "migration total time (ms)")):
        lines.append(f"{label:<28}{migration['median'][DIRECT][key]:>12.1f}"
                     f"{migration['median'][PROXIED][key]:>12.1f}")
    means = migration["downtime_mean"]
    lines.append(f"{'  downtime, mean (ms)':<28}{means[DIRECT]:>12.1f}{means[PROXIED]:>12.1f}")
    lines.append(f"{'GET_FEATURES round trips/s':<28}{control['median'][DIRECT]:>12.0f}"
                 f"{control['median'][PROXIED]:>12.0f}")
    lines.append(f"control messages/s through the proxy: "
                 f"{control['messages_per_s_through_proxy']}")
    return "\n".join(lines)


async def measure(repeat: int, control_seconds: float) -> dict[str, Any]:
    start = await compare(START_BACKENDS, repeat)
    migrations = await measure_migrations(repeat)
    control = await measure_control(repeat, control_seconds)
    return report(start, migrations, control, repeat)


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench_proxy", __doc__)
    parser.add_argument("--repeat", type=int, default=10,
                        help="samples of each (default 10: migration downtime is noisy)")
    parser.add_argument("--control-seconds", type=float, default=CONTROL_SECONDS,
                        help=f"time spent on the control-message rate (default "
                             f"{CONTROL_SECONDS:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def checked_measure() -> Document:
        check_repeat(args.repeat)
        if args.control_seconds <= 0:
            raise InputError("--control-seconds must be positive")
        return asyncio.run(measure(args.repeat, args.control_seconds))

    return run_bench("bench_proxy", checked_measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
