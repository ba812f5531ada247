"""``probe --tap`` cost per QEMU binary and machine type, and a tap migration 10.0 -> 7.2.

Probe variants run round-robin (QEMU 10.0 on q35, QEMU 10.0 on pc-q35-7.2,
QEMU 7.2 on q35), each sample timing its phases:

* ``binary``: ``-version``, ``-machine help``, ``-device virtio-net-pci,help``;
* ``kernel``: the tap offload questions (TUNSETIFF + TUNSETOFFLOAD) and vhost-net;
* ``qemu``: QEMU paused on a tap, QMP ``x-query-virtio-status`` and a
  ``qom-get`` per boolean property, QEMU stopped;
* ``total``.

With ``--migrations N`` it also migrates a qtest guest from QEMU 10.0
(pc-q35-7.2, as the baseline pins it) to QEMU 7.2 on taps N times, reporting
QEMU's own total time and downtime. Needs root (tap devices) and QEMU 10.0
(``$VHOSTCOMPAT_QEMU10``, default: the wrapper scripts/qemu10.sh writes).

    python -m bench.bench_tap --repeat 10 --migrations 5 [--json]
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat.errors import InputError
from vhostcompat.lab.qemu import qemu10_binary
from vhostcompat.lab.tap import unique_tap_name
from vhostcompat.lab.uso import TapSide, play_tap_migration
from vhostcompat.qemuinfo import binary_facts, device_facts
from vhostcompat.tap import probe_tap_offloads, probe_vhost_net

PHASES = ("binary", "kernel", "qemu", "total")
QEMU72 = "qemu-system-x86_64"


def variants() -> dict[str, tuple[str, str]]:
    qemu10 = qemu10_binary()
    return {"10.0 q35": (qemu10, "q35"), "10.0 pc-q35-7.2": (qemu10, "pc-q35-7.2"),
            "7.2 q35": (QEMU72, "q35")}


async def probe_once(binary: str, machine: str) -> dict[str, float]:
    started = time.monotonic()
    facts = await binary_facts(binary)
    after_binary = time.monotonic()
    probe_tap_offloads()
    probe_vhost_net()
    after_kernel = time.monotonic()
    await device_facts(facts, machine, tap=unique_tap_name("vcb"))
    done = time.monotonic()
    return {"binary": after_binary - started, "kernel": after_kernel - after_binary,
            "qemu": done - after_kernel, "total": done - started}


async def migrate_once() -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="vc-bench-", dir="/tmp"))
    try:
        run = await play_tap_migration(run_dir, TapSide(qemu10_binary(), "pc-q35-7.2"),
                                       TapSide(QEMU72, "pc-q35-7.2"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"status": run.status, "downtime_ms": run.downtime_ms}


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1e3, 1),
            "min_ms": round(min(values) * 1e3, 1), "max_ms": round(max(values) * 1e3, 1)}


async def measure(repeat: int, migrations: int) -> dict[str, Any]:
    cases = variants()
    for binary in {binary for binary, _machine in cases.values()}:
        if shutil.which(binary) is None:
            raise InputError(f"{binary}: not found (scripts/setup.sh installs QEMU 7.2 and 10.0)")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, (binary, machine) in cases.items():
            samples[name].append(await probe_once(binary, machine))
    runs = [await migrate_once() for _ in range(migrations)]
    downtimes = [run["downtime_ms"] for run in runs if isinstance(run["downtime_ms"], int)]
    return {
        "benchmark": "probe --tap and a tap migration QEMU 10.0 -> 7.2",
        "repeat": repeat,
        "probes": {name: {phase: spread([sample[phase] for sample in runs_of])
                          for phase in PHASES} for name, runs_of in samples.items()},
        "migrations": {"runs": runs,
                       "completed": sum(run["status"] == "completed" for run in runs),
                       "downtime_ms_median": statistics.median(downtimes) if downtimes
                       else None},
    }


def render(document: Document) -> str:
    lines = [f"probe --tap, {document['repeat']} run(s) each (ms, median / min / max)",
             f"{'QEMU, machine':<18}" + "".join(f"{phase:>24}" for phase in PHASES)]
    for name, phases in document["probes"].items():
        lines.append(f"{name:<18}" + "".join(
            f"{phases[p]['median_ms']:>10.1f} /{phases[p]['min_ms']:>6.1f} /"
            f"{phases[p]['max_ms']:>5.0f}" for p in PHASES))
    migrations = document["migrations"]
    if migrations["runs"]:
        lines.append(f"migration 10.0 (pc-q35-7.2) -> 7.2 on taps: "
                     f"{migrations['completed']}/{len(migrations['runs'])} completed, "
                     f"downtime median {migrations['downtime_ms_median']} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("bench_tap", __doc__)
    parser.add_argument("--repeat", type=int, default=5, help="probes per variant (default 5)")
    parser.add_argument("--migrations", type=int, default=0,
                        help="tap migrations 10.0 -> 7.2 to time (default 0)")
    args = parser.parse_args(argv)

    def run() -> Document:
        check_repeat(args.repeat)
        if args.migrations < 0:
            raise InputError("--migrations must not be negative")
        return asyncio.run(measure(args.repeat, args.migrations))

    return run_bench("bench_tap", run, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
