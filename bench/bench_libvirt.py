"""A lab libvirtd's start, cold and warm, and a vhost-user domain's live migration.

* ``cold``: a fresh host whose daemon probes QEMU (empty capability cache);
* ``warm``: a fresh host seeded from a :class:`CapabilityCache` filled once;
  cold and warm samples alternate, so drift of the machine hits both alike;
* ``domain start``: ``virsh start`` of a TCG domain on DPDK testpmd behind the
  proxy (the hook installed, as in the e2e test);
* ``migration``: ``virsh migrate --live --p2p`` over loopback, back and forth
  between two daemons, the domain running on the destination after each one
  (vhost runs while SeaBIOS's iPXE drives the NIC, ~3-21 s after start: the
  first migration moves a running device, later ones a stopped one).

    python -m bench.bench_libvirt --repeat 3 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat import manager
from vhostcompat.lab import libvirt as lab_libvirt
from vhostcompat.lab.commands import ProxyMode, RunningProxy
from vhostcompat.lab.hosts import dpdk_testpmd, run_backend
from vhostcompat.lab.libvirt import (
    CapabilityCache,
    LibvirtDaemon,
    LibvirtError,
    LibvirtHost,
    StartTiming,
    TcgDomain,
    VhostUserInterface,
)
from vhostcompat.libvirt.hook import install_hook
from vhostcompat.libvirt.metadata import DomainMetadata, InterfaceMetadata
from vhostcompat.profiles import load_default_catalog
from vhostcompat.proxy import ProxyState

VERSION = "debian12.dpdk-vhost.v22.11"
MAC = "52:54:00:0b:0e:0c"
VHOST_TIMEOUT = 60.0


@contextlib.contextmanager
def run_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def start_once(cache: CapabilityCache | None) -> float:
    """Seconds until a fresh host's libvirtd answers (stopped afterwards, not timed)."""
    timings: list[StartTiming] = []
    with run_directory() as run_dir:
        async with lab_libvirt.run_hosts(run_dir, ["h"], cache, timings=timings):
            pass
    return timings[0].seconds


async def wait_running(proxy: RunningProxy) -> None:
    await proxy.wait_for(lambda status: status.state is ProxyState.RUNNING, VHOST_TIMEOUT,
                         "vhost running")


async def migrations(repeat: int, cache: CapabilityCache,
                     hooked: bool) -> tuple[float, list[float]]:
    """The domain's ``virsh start`` time, and each migration's (there and back).

    ``hooked``: our hook installed in both daemons (it runs on every hook call
    libvirt makes: on a migration's destination ``migrate``, ``prepare``,
    ``start``, ``started``; on its source ``stopped``, ``release``).
    """
    with run_directory() as run_dir:
        stores = {name: str(run_dir / f"store-{name}") for name in "ab"}
        for store in stores.values():
            await manager.publish(store, load_default_catalog(), [VERSION])

        def install(host: LibvirtHost) -> None:
            install_hook(stores[host.name], host.hooks_dir)

        async with lab_libvirt.run_hosts(run_dir, ["a", "b"], cache,
                                         install if hooked else None) as daemons, \
                contextlib.AsyncExitStack() as stack:
            proxies: list[RunningProxy] = []
            for daemon in daemons:
                _, proxy, _ = await stack.enter_async_context(run_backend(
                    daemon.host.vhost_user_dir, "vhu0", dpdk_testpmd(),
                    ProxyMode(profile=VERSION)))
                assert proxy is not None
                proxies.append(proxy)
            domain = TcgDomain("bench", (VhostUserInterface(
                MAC, lab_libvirt.VHOST_USER_PATH_INSIDE / "vhu0-proxy.sock"),),
                metadata=(DomainMetadata((InterfaceMetadata(MAC, VERSION, "vhu0"),))
                          .to_element(),), option_rom=True)
            started = time.monotonic()
            result = await lab_libvirt.define_and_start(daemons[0], domain, run_dir)
            start_seconds = time.monotonic() - started
            if not result.ok:
                raise LibvirtError(f"virsh start: {result.error_line()}")
            await wait_running(proxies[0])
            seconds = []
            for index in range(2 * repeat):
                source, destination = index % 2, 1 - index % 2
                seconds.append(await migrate(daemons[source], daemons[destination]))
                if await daemons[destination].domain_state("bench") != "running":
                    raise LibvirtError("the domain does not run on the destination")
            return start_seconds, seconds


async def migrate(source: LibvirtDaemon, destination: LibvirtDaemon) -> float:
    started = time.monotonic()
    result = await lab_libvirt.migrate(source, destination, "bench")
    if not result.ok:
        raise LibvirtError(f"virsh migrate: {result.error_line()}")
    return time.monotonic() - started


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3)}


async def measure(repeat: int) -> Document:
    cold: list[float] = []
    warm: list[float] = []
    with run_directory() as cache_dir:
        cache = CapabilityCache(cache_dir / "capabilities")
        await start_once(cache)  # fills the cache (not a sample)
        for _ in range(repeat):
            cold.append(await start_once(None))
            warm.append(await start_once(cache))
        start_hooked, hooked = await migrations(repeat, cache, True)
        start_plain, plain = await migrations(repeat, cache, False)
    return {"repeat": repeat, "cold_start_s": summary(cold), "warm_start_s": summary(warm),
            "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
            "domain_start_s": {"hook": round(start_hooked, 3),
                               "no_hook": round(start_plain, 3)},
            "migration_s": {"hook": summary(hooked), "no_hook": summary(plain)},
            "migrations": len(hooked) + len(plain)}


def render(document: Document) -> str:
    rows = [("libvirtd start, cold (s)", document["cold_start_s"]),
            ("libvirtd start, warm cache (s)", document["warm_start_s"]),
            ("virsh migrate --live --p2p, our hook installed (s)",
             document["migration_s"]["hook"]),
            ("virsh migrate --live --p2p, no hook (s)", document["migration_s"]["no_hook"])]
    lines = ["| measured | median | min | max |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {label} | {values['median']} | {values['min']} | {values['max']} |"
              for label, values in rows]
    starts = document["domain_start_s"]
    lines.append(f"cold/warm: {document['cold_over_warm']}x; virsh start of the domain: "
                 f"{starts['hook']} s with the hook, {starts['no_hook']} s without; "
                 f"{document['migrations']} migrations")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("bench_libvirt", __doc__ or "")
    parser.add_argument("--repeat", type=int, default=3,
                        help="cold/warm start pairs, and migration round trips (default 3)")
    args: argparse.Namespace = parser.parse_args(argv)
    def measured() -> Document:
        check_repeat(args.repeat)
        return asyncio.run(measure(args.repeat))

    return run_bench("bench_libvirt", measured, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
