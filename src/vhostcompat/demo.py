"""``vhostcompat demo``: the upstream proposal's story, played act by act.

The story (Open vSwitch / OpenStack lists, 2017): a VM on a host whose
vhost-user backend offers indirect descriptors negotiates them; migrated to a
host with an older backend, it breaks, because live migration never
renegotiates. The proposal's answer: named compatibility versions, published
by each host, selected by the management layer, checked before migrating.

The demo is a list of acts (:data:`ACTS`), each a function of a shared
:class:`Stage` (work directory, hosts, catalog, output). Acts run the real
``vhostcompat`` commands in-process and print them with their output, so
every step can be replayed by hand in the work directory. A later act (real
QEMU + DPDK) is added by appending to :data:`ACTS` or passing a list to
:func:`run_demo`. An act that sees an unexpected outcome records it with
:meth:`Stage.expect`; the demo then exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from vhostcompat.cli import main
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import open_host
from vhostcompat.profiles import NegotiatedState, load_default_catalog

V27 = "upstream.ovs-dpdk.v2.7"
V26 = "upstream.ovs-dpdk.v2.6"
FC26 = "fc26.ovs-dpdk.v2.6"


@dataclass
class Stage:
    """What the acts share: where they play, what they print, what went wrong."""

    workdir: Path
    out: TextIO
    unexpected: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        """Narration, wrapped for a terminal."""
        for paragraph in textwrap.dedent(text).strip().split("\n\n"):
            self.out.write(textwrap.fill(" ".join(paragraph.split()), width=78) + "\n\n")

    def vhostcompat(self, *argv: str) -> tuple[int, str]:
        """Run one CLI command in the work directory, print it and its output."""
        captured = io.StringIO()
        with contextlib.chdir(self.workdir), contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            status = main(list(argv))
        self.out.write(f"  $ vhostcompat {' '.join(argv)}\n")
        for line in captured.getvalue().splitlines():
            self.out.write(f"    {line}\n")
        self.out.write(f"    (exit {status})\n\n")
        return status, captured.getvalue()

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.unexpected.append(what)
            self.out.write(f"  !! unexpected: {what}\n\n")

    def host(self, name: str) -> str:
        return str(self.workdir / name)


@dataclass(frozen=True)
class Act:
    """One scene of the demo."""

    title: str
    play: Callable[[Stage], None]


def act_publish(stage: Stage) -> None:
    stage.say("""
        Each host publishes the compatibility versions its backend build supports,
        newest first, with each version's profile (features and limits). host-a runs
        a recent build: it supports every shipped version, including the DPDK 22.11
        ones and the proposal's upstream.ovs-dpdk.v2.7 (indirect descriptors).
        host-b still runs OVS 2.6: it only knows upstream.ovs-dpdk.v2.6.
        """)
    stage.vhostcompat("profiles")
    status, _ = stage.vhostcompat("publish", "--db", "host-a")
    stage.expect(status == 0, "publishing host-a failed")
    status, _ = stage.vhostcompat("publish", "--db", "host-b", "--only", V26)
    stage.expect(status == 0, "publishing host-b failed")
    stage.vhostcompat("versions", "host-a", "host-b")
    stage.vhostcompat("profile", "diff", V27, V26)


def act_select(stage: Stage) -> None:
    stage.say("""
        Before vm1 starts, the management layer asks every host it may ever run on
        and selects the first version they all publish. It writes that version
        into the vhost-user interface's parameters on each host: the backend will
        run the interface in that mode, whatever newer code it has.
        """)
    status, output = stage.vhostcompat("select", "host-a", "host-b")
    stage.expect(status == 0 and output.strip() == V26,
                 f"select should print {V26}, got {output.strip()!r}")
    status, _ = stage.vhostcompat("select", "host-a", "host-b", "--prefer", V27)
    stage.expect(status == 1, f"pinning {V27} should be refused (host-b lacks it)")
    status, _ = stage.vhostcompat("provision", "host-a", "host-b", "--iface", "vhu-vm1")
    stage.expect(status == 0, "provisioning vhu-vm1 failed")


def act_failing_migration(stage: Stage) -> None:
    stage.say(f"""
        Without that care, vm2 was started on host-a alone, in the newest mode,
        {V27}. The guest negotiated indirect descriptors, and host-a's agent
        recorded what it acked.
        """)
    stage.vhostcompat("assign", "--db", "host-a", "--iface", "vhu-vm2", "--version", V27)
    catalog = load_default_catalog()
    acked = catalog.get(V27).virtio_features & ~VirtioFeature.VHOST_F_LOG_ALL
    asyncio.run(_record(stage.host("host-a"), "vhu-vm2", NegotiatedState(
        acked_features=acked, queue_pairs=1, ring_size=256, status="running")))
    stage.out.write(f"  (host-a's agent records vhu-vm2: acked features {int(acked):#x}, "
                    "1 queue pair, rings of 256)\n\n")
    stage.say("""
        Migrating vm2 to host-b would break inside QEMU, at load time on the
        destination ("Features 0x... unsupported"), after the source has stopped
        the VM. The check says so beforehand, in words:
        """)
    status, output = stage.vhostcompat("check-migration", "--iface", "vhu-vm2",
                                       "--from", "host-a", "--to", "host-b")
    stage.expect(status == 1 and "VIRTIO_RING_F_INDIRECT_DESC" in output,
                 "vm2 -> host-b should be refused naming VIRTIO_RING_F_INDIRECT_DESC")


def act_passing_migration(stage: Stage) -> None:
    stage.say(f"""
        vm1 was provisioned in {V26} mode on both hosts: host-a's backend never
        offered indirect descriptors to it, so it can move either way.
        """)
    status, _ = stage.vhostcompat("check-migration", "--iface", "vhu-vm1",
                                  "--from", "host-a", "--to", "host-b")
    stage.expect(status == 0, "vm1 -> host-b should be compatible")
    status, _ = stage.vhostcompat("check-migration", "--iface", "vhu-vm1",
                                  "--from", "host-b", "--to", "host-a")
    stage.expect(status == 0, "vm1 -> host-a should be compatible")


def act_by_content(stage: Stage) -> None:
    stage.say(f"""
        Going further than the proposal: host-c runs a distribution's build that
        publishes only its own name, {FC26} (upstream 2.6 plus a backported
        feature). The version strings differ, but published profiles are
        self-describing, so the check can match them by content, and says so.
        """)
    status, _ = stage.vhostcompat("publish", "--db", "host-c", "--only", FC26)
    stage.expect(status == 0, "publishing host-c failed")
    status, output = stage.vhostcompat("check-migration", "--iface", "vhu-vm1",
                                       "--from", "host-a", "--to", "host-c")
    stage.expect(status == 0 and output.startswith("compatible by content"),
                 "vm1 -> host-c should be compatible by content")
    stage.vhostcompat("matrix", "host-a", "host-b", "host-c", "--version", V26)


def act_frontend(stage: Stage) -> None:
    stage.say(f"""
        The same profile can also pin the frontend: these QEMU virtio-net-pci
        properties keep the guest from ever being offered what {V26} lacks
        (notes explain the rest).
        """)
    status, output = stage.vhostcompat("qemu-args", "--profile", V26)
    stage.expect(status == 0 and "indirect_desc=off" in output,
                 "qemu-args should switch indirect_desc off")


async def _record(address: str, interface: str, state: NegotiatedState) -> None:
    async with open_host(address) as store:
        await store.record_negotiated(interface, state)


ACTS: list[Act] = [
    Act("Hosts publish their compatibility versions", act_publish),
    Act("The manager selects a common version", act_select),
    Act("A migration that would break is refused beforehand", act_failing_migration),
    Act("A migration in a common mode passes", act_passing_migration),
    Act("Different names, same content", act_by_content),
    Act("Pinning the frontend from the same profile", act_frontend),
]


def run_demo(acts: Sequence[Act] | None = None, out: TextIO | None = None,
             workdir: Path | None = None) -> int:
    """Play the acts; 0 if every outcome was the expected one, 1 otherwise."""
    stream = out or sys.stdout
    keep = workdir is not None
    directory = workdir or Path(tempfile.mkdtemp(prefix="vhostcompat-demo-", dir="/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    stage = Stage(directory, stream)
    try:
        stream.write(f"vhostcompat demo: the upstream proposal's indirect-descriptor story\n"
                     f"(work directory: {directory})\n\n")
        for number, act in enumerate(acts if acts is not None else ACTS, start=1):
            stream.write(f"== Act {number}: {act.title}\n\n")
            act.play(stage)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    if stage.unexpected:
        stream.write("The demo saw unexpected outcomes:\n")
        stream.writelines(f"  - {what}\n" for what in stage.unexpected)
        return 1
    stream.write("Every outcome was the expected one.\n")
    return 0
