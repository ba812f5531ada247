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
import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from vhostcompat.cli import main
from vhostcompat.errors import VhostCompatError
from vhostcompat.features import VirtioFeature, names
from vhostcompat.hoststore import open_host
from vhostcompat.lab.commands import run_agent
from vhostcompat.lab.ovs import OvsConfig, run_ovs_pair
from vhostcompat.lab.ovs import missing_tools as missing_ovs_tools
from vhostcompat.lab.qemu import RunningQemu, qemu10_binary
from vhostcompat.lab.story import MigrationRun, OvsMigrationRun, ovs_migration, play_migration
from vhostcompat.lab.uso import TapMigrationRun, TapSide, play_tap_migration
from vhostcompat.profiles import NegotiatedState, load_default_catalog
from vhostcompat.tap import TUN_PATH

V27 = "upstream.ovs-dpdk.v2.7"
V26 = "upstream.ovs-dpdk.v2.6"
FC26 = "fc26.ovs-dpdk.v2.6"
COMMAND_TIMEOUT = 60.0


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
        return self._show(["vhostcompat", *argv], status, captured.getvalue())

    async def command(self, *argv: str) -> tuple[int, str]:
        """Run ``vhostcompat ...`` or any program as a child (the event loop keeps
        serving the lab meanwhile), print it and its output."""
        program = [sys.executable, "-m", "vhostcompat.cli"] if argv[0] == "vhostcompat" \
            else [argv[0]]
        process = await asyncio.create_subprocess_exec(
            *program, *argv[1:], cwd=self.workdir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        assert process.returncode is not None  # communicate() waited for the exit
        return self._show(argv, process.returncode, output.decode(errors="replace"))

    def _show(self, argv: Sequence[str], status: int, output: str) -> tuple[int, str]:
        self.out.write(f"  $ {' '.join(argv)}\n")
        for line in output.splitlines():
            self.out.write(f"    {line}\n")
        self.out.write(f"    (exit {status})\n\n")
        return status, output

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


DPDK_TSO = "debian12.dpdk-vhost.v22.11-tso"
DPDK = "debian12.dpdk-vhost.v22.11"
LAB_TOOLS = ("qemu-system-x86_64", "dpdk-testpmd")
TSO_BITS = VirtioFeature.VIRTIO_NET_F_HOST_TSO4 | VirtioFeature.VIRTIO_NET_F_HOST_TSO6


def act_real_story(stage: Stage) -> None:
    missing = [tool for tool in LAB_TOOLS if shutil.which(tool) is None]
    if missing:
        # Tool names on their own line: the narration's wrapping would split them.
        stage.out.write(f"  Skipped: not on the PATH: {', '.join(missing)}\n\n")
        stage.say("""
            This act plays the story with real QEMU and DPDK testpmd. scripts/setup.sh
            installs them (the Debian packages qemu-system-x86 and dpdk-dev) when run as
            root. Everything above ran without them.
            """)
        return
    stage.say(f"""
        Now for real: two hosts on this machine, each a QEMU with a qtest guest driver
        and a real DPDK 22.11 testpmd back-end. lab-a runs testpmd with tso=1 (the newer
        back-end, {DPDK_TSO}), lab-b the default one ({DPDK}). Each publishes what it
        runs, and the manager selects for vm3's interface.
        """)
    status, _ = stage.vhostcompat("publish", "--db", "lab-a", "--only", DPDK_TSO,
                                  "--only", DPDK)
    stage.expect(status == 0, "publishing lab-a failed")
    status, _ = stage.vhostcompat("publish", "--db", "lab-b", "--only", DPDK)
    stage.expect(status == 0, "publishing lab-b failed")
    status, output = stage.vhostcompat("provision", "lab-a", "lab-b", "--iface", "vhu-vm3")
    stage.expect(status == 0 and DPDK in output, f"provisioning should select {DPDK}")
    run_dir = Path(tempfile.mkdtemp(prefix="vc-demo-lab-", dir="/tmp"))  # short socket paths
    try:
        (run_dir / "without").mkdir()
        (run_dir / "with").mkdir()
        without = asyncio.run(play_migration(run_dir / "without"))
        hosts = (stage.host("lab-a"), stage.host("lab-b"))
        with_mode = asyncio.run(play_migration(run_dir / "with", hosts=hosts,
                                               iface="vhu-vm3"))
    except VhostCompatError as error:
        stage.expect(False, f"the real story could not be played: {error}")
        return
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    _tell_without_mode(stage, without)
    _tell_with_mode(stage, with_mode)
    stage.say("""
        Both proxies recorded what the guest negotiated in their host's store, so the
        migration check works from what was actually acked:
        """)
    status, _ = stage.vhostcompat("check-migration", "--iface", "vhu-vm3", "--from", "lab-a",
                                  "--to", "lab-b")
    stage.expect(status == 0, "vm3 -> lab-b should be compatible")


def _features(value: VirtioFeature) -> str:
    return f"{int(value):#x}"


def _tell_without_mode(stage: Stage, run: MigrationRun) -> None:
    took = ", ".join(names(run.acked & TSO_BITS, VirtioFeature)) or "no TSO"
    stage.out.write(
        "  Without a compatibility mode (QEMU straight on testpmd):\n"
        f"    lab-a's testpmd offers {_features(run.backend_features)}; the guest acked "
        f"{_features(run.acked)}, including {took}\n"
        f"    migration lab-a -> lab-b: {run.status}\n"
        f"    lab-b's QEMU: {run.destination_error}\n\n")
    stage.expect(run.acked & TSO_BITS == TSO_BITS, "without a mode the guest should take TSO")
    stage.expect(run.status == "failed", "without a mode the migration should fail")


def _tell_with_mode(stage: Stage, run: MigrationRun) -> None:
    withheld = ", ".join(names(run.backend_features & ~run.offered, VirtioFeature)) or "none"
    same = run.destination_acked == run.acked
    landed = "-" if run.destination_acked is None else _features(run.destination_acked)
    stage.out.write(
        f"  With both interfaces behind vhostcompat proxy in {run.mode}:\n"
        f"    lab-a's testpmd offers {_features(run.backend_features)}; the proxy offered "
        f"{_features(run.offered)} (withheld: {withheld})\n"
        f"    the guest acked {_features(run.acked)}\n"
        f"    migration lab-a -> lab-b: {run.status}, downtime {run.downtime_ms} ms\n"
        f"    guest features on lab-b: {landed} ({'the same' if same else 'DIFFERENT'})\n\n")
    stage.expect(run.mode == DPDK, f"the proxies should run in {DPDK}")
    stage.expect(not run.acked & TSO_BITS, "in the mode the guest should not take TSO")
    stage.expect(run.status == "completed", "in the mode the migration should complete")
    stage.expect(same, "the destination's guest features should equal the source's")


OVS_BASE = "debian12.ovs-dpdk.v3.1-base"
OVS_CATALOG = "ovs-dpdk-3.1.toml"


def act_ovs_story(stage: Stage) -> None:
    missing = [tool for tool in ("qemu-system-x86_64",) if shutil.which(tool) is None]
    missing += missing_ovs_tools()
    if missing:
        stage.out.write(f"  Skipped: not installed: {', '.join(missing)}\n\n")
        stage.say("""
            This act plays the story on real Open vSwitch with the DPDK datapath.
            scripts/setup.sh installs it (the Debian package openvswitch-switch-dpdk)
            when run as root. Everything above ran without it.
            """)
        return
    stage.say("""
        Now on real Open vSwitch with the DPDK datapath (OVS 3.1 + DPDK 22.11), the way
        operators run it: two hosts on this machine, each its own ovsdb-server and
        ovs-vswitchd-dpdk. ovs-a has other_config:userspace-tso-enable=true, ovs-b not:
        OVS itself withholds TSO unless told, so they are two back-end versions. Each
        host publishes only what its running OVS honours: publish --probe-ovs adds a
        transient port, answers OVS as a vhost-user front-end, and removes the port.
        """)
    catalog = str(resources.files("vhostcompat").joinpath("catalogs", OVS_CATALOG))
    run_dir = Path(tempfile.mkdtemp(prefix="vc-demo-ovs-", dir="/tmp"))  # short socket paths
    try:
        asyncio.run(_play_ovs(stage, run_dir, catalog))
    except VhostCompatError as error:
        stage.expect(False, f"the OVS-DPDK story could not be played: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _play_ovs(stage: Stage, run_dir: Path, catalog: str) -> None:
    async with run_ovs_pair([OvsConfig("a", tso=True), OvsConfig("b")], run_dir) as pair:
        host_a, host_b = pair["a"], pair["b"]
        for host in (host_a, host_b):
            status, _ = await stage.command("vhostcompat", "publish", "--db", host.remote,
                                            "--catalog", catalog, "--probe-ovs")
            stage.expect(status == 0, f"publishing ovs-{host.config.name} failed")
        status, output = await stage.command("vhostcompat", "select", host_a.remote,
                                             host_b.remote)
        stage.expect(status == 0 and output.strip() == OVS_BASE,
                     f"select should print {OVS_BASE}")
        stage.say("""
            Without a mode, QEMU on ovs-a (the vhost-user server of a dpdkvhostuserclient
            port) meets OVS directly: the guest takes TSO, and the migration to ovs-b fails
            inside QEMU.
            """)
        async with ovs_migration(run_dir, host_a, host_b, "vhu1") as (run, _, _):
            _tell_ovs_run(stage, run)
            stage.expect(run.acked & TSO_BITS == TSO_BITS and run.status == "failed",
                         "without a mode the guest should take TSO and the migration fail")
        stage.say("""
            With vhostcompat agent running on both hosts, the selected version is assigned
            the operator's way, on each host:
            """)
        stage.out.write(f"  $ ovs-vsctl set Interface vhu0 "
                        f"options:vhost-compat-version={OVS_BASE}\n\n")
        stage.say("""
            Each agent starts a proxy in that mode and re-creates the port on its own
            socket (QEMU's path kept on the row); then the VMs start.
            """)
        async with run_agent(host_a.remote, run_dir / "agent-a", run_dir, "agent-a"), \
                run_agent(host_b.remote, run_dir / "agent-b", run_dir, "agent-b"), \
                ovs_migration(run_dir, host_a, host_b, "vhu0", OVS_BASE) as (run, _, _):
            _tell_ovs_run(stage, run)
            stage.expect(not run.acked & TSO_BITS and run.status == "completed"
                         and run.destination_acked == run.acked,
                         "in the mode the migration should complete, features unchanged")
            stage.say("What ovs-b's agent recorded, and what OVS itself negotiated:")
            for column in ("external_ids", "status:features"):
                await stage.command("ovs-vsctl", f"--db={host_b.remote}", "get", "Interface",
                                    "vhu0", column)
            status, _ = await stage.command("vhostcompat", "check-migration", "--iface",
                                            "vhu0", "--from", host_a.remote,
                                            "--to", host_b.remote)
            stage.expect(status == 0, "vhu0 -> ovs-b should be compatible")


def _tell_ovs_run(stage: Stage, run: OvsMigrationRun) -> None:
    took = ", ".join(names(run.acked & TSO_BITS, VirtioFeature)) or "no TSO"
    outcome = (f"completed, downtime {run.downtime_ms} ms; on ovs-b the device runs, guest "
               f"features {_features(run.destination_acked)}" if run.destination_acked
               is not None else f"{run.status}; ovs-b's QEMU: {run.destination_error}")
    stage.out.write(
        f"  {run.iface}, mode {run.mode or 'none'}: QEMU on ovs-a was offered "
        f"{_features(run.offered)}; the guest acked {_features(run.acked)} ({took})\n"
        f"    migration ovs-a -> ovs-b: {outcome}\n\n")


USO_BITS = (VirtioFeature.VIRTIO_NET_F_GUEST_USO4 | VirtioFeature.VIRTIO_NET_F_GUEST_USO6
            | VirtioFeature.VIRTIO_NET_F_HOST_USO)
USO_ON = {"host_uso": "on", "guest_uso4": "on", "guest_uso6": "on"}
USO_COMMON = "uso.tap-common"
QEMU72 = "qemu-system-x86_64"


def _uso_missing() -> list[str]:
    """Why the USO act cannot play here (empty when it can)."""
    missing = [f"{tool} (not on the PATH)" for tool in (QEMU72, "ip")
               if shutil.which(tool) is None]
    if shutil.which(qemu10_binary()) is None:
        missing.append(f"QEMU 10.0 ({qemu10_binary()}: not found; scripts/qemu10.sh unpacks "
                       "it, or set VHOSTCOMPAT_QEMU10)")
    if os.geteuid() != 0:
        missing.append("root (tap devices need CAP_NET_ADMIN)")
    if not TUN_PATH.exists():
        missing.append(f"{TUN_PATH} (no tun/tap in this kernel)")
    return missing


def act_uso_story(stage: Stage) -> None:
    missing = _uso_missing()
    if missing:
        stage.out.write("  Skipped: this act needs " + "; ".join(missing) + "\n\n")
        stage.say("""
            This act plays the USO migration failure of 2024-2026 with QEMU 10.0 and
            QEMU 7.2 on tap devices. scripts/setup.sh installs both when run as root.
            """)
        return
    qemu10 = qemu10_binary()
    stage.say(f"""
        Beyond vhost-user: the most reported virtio-net migration failures of the last
        two years (KubeVirt 16386, IONOS, Proxmox) are guests on a tap that acked UDP
        segmentation offload (USO, bits 54-56), offered by a QEMU 8.2+ on a Linux 6.2+
        source, moved to a host whose QEMU or kernel lacks it. Here uso-a runs QEMU
        10.0 ({qemu10}), uso-b QEMU 7.2, each VM on its own tap. Each host probes
        what it really offers and publishes it as its own profile.
        """)
    captured = {"uso-a": (qemu10, "uso.qemu-10.0"), "uso-b": (QEMU72, "uso.qemu-7.2")}
    for host, (binary, version) in captured.items():
        status, output = stage.vhostcompat("probe", "--tap", "--qemu", binary,
                                           "--as-profile", version)
        stage.expect(status == 0, f"probing {host} failed")
        (stage.workdir / f"{host}.toml").write_text(output)
        status, _ = stage.vhostcompat("publish", "--db", host, "--catalog", f"{host}.toml")
        stage.expect(status == 0, f"publishing {host} failed")
    status, _ = stage.vhostcompat("select", "uso-a", "uso-b")
    stage.expect(status == 1, "the two captured profiles should have nothing in common")
    stage.say("""
        Neither host's offer satisfies the other's (USO; machine types), so the
        manager computes their common ground, as virsh hypervisor-cpu-baseline does
        for CPUs, and uso-a publishes it beside its own. uso-b satisfies it by content.
        """)
    status, output = stage.vhostcompat("baseline", "uso-a", "uso-b", "--name", USO_COMMON)
    stage.expect(status == 0 and "newest common machine type: pc-q35-7.2" in output,
                 "the baseline should name pc-q35-7.2")
    (stage.workdir / "uso-common.toml").write_text(output)
    stage.vhostcompat("publish", "--db", "uso-a", "--catalog", "uso-a.toml",
                      "--catalog", "uso-common.toml")
    status, output = stage.vhostcompat("select", "uso-a", "uso-b")
    stage.expect(status == 0 and output.split() == [USO_COMMON, "machine", "type:",
                                                     "pc-q35-7.2"],
                 f"select should be {USO_COMMON} on machine type pc-q35-7.2")
    stage.vhostcompat("provision", "uso-a", "uso-b", "--iface", "tap-vm4")
    stage.vhostcompat("assign", "--db", "uso-a", "--iface", "tap-vm5",
                      "--version", "uso.qemu-10.0")
    status, output = stage.vhostcompat("qemu-args", "--catalog", "uso-common.toml",
                                       "--profile", USO_COMMON, "--qemu", qemu10, "--json")
    pinning = json.loads(output) if status == 0 else {"machine": None, "properties": {}}
    stage.expect(pinning["machine"] == "pc-q35-7.2", "qemu-args should run pc-q35-7.2")
    try:
        runs = _play_uso_runs(stage, qemu10, str(pinning["machine"]),
                              {str(key): str(value)
                               for key, value in pinning["properties"].items()})
    except VhostCompatError as error:
        stage.expect(False, f"the USO story could not be played: {error}")
        return
    _tell_uso(stage, *runs)


def _play_uso_runs(stage: Stage, qemu10: str, machine: str, pinned: dict[str, str],
                   ) -> tuple[TapMigrationRun, TapMigrationRun, TapMigrationRun]:
    destination = TapSide(QEMU72, "pc-q35-7.2")

    def record_and_check(iface: str) -> Callable[[RunningQemu], Awaitable[None]]:
        async def before(source: RunningQemu) -> None:
            for argv in (("record", "--qmp", str(source.paths.management_qmp), "--db",
                          stage.host("uso-a"), "--iface", iface),
                         ("check-migration", "--iface", iface, "--from", "uso-a",
                          "--to", "uso-b")):
                await asyncio.to_thread(stage.vhostcompat, *argv)
        return before

    run_dir = Path(tempfile.mkdtemp(prefix="vc-demo-uso-", dir="/tmp"))
    try:
        for name in ("machine", "uso", "pinned"):
            (run_dir / name).mkdir()
        stage.out.write("  (vm6 on uso-a: QEMU 10 on its own q35, migrated to uso-b as is)\n\n")
        by_machine = asyncio.run(play_tap_migration(
            run_dir / "machine", TapSide(qemu10, "q35"), destination))
        stage.out.write("  (vm5 on uso-a: QEMU 10 on machine pc-q35-7.2 with USO on, as on "
                        "its own q35; its agent records what the guest acked)\n\n")
        by_uso = asyncio.run(play_tap_migration(
            run_dir / "uso", TapSide(qemu10, "pc-q35-7.2", USO_ON), destination,
            before_migration=record_and_check("tap-vm5")))
        properties = ",".join(f"{key}={value}" for key, value in pinned.items())
        stage.out.write(f"  (vm4 on uso-a: QEMU 10 pinned by qemu-args: -machine {machine}, "
                        f"{properties or 'no device property needed on that machine type'})"
                        "\n\n")
        pinned_run = asyncio.run(play_tap_migration(
            run_dir / "pinned", TapSide(qemu10, machine, pinned), destination,
            before_migration=record_and_check("tap-vm4")))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return by_machine, by_uso, pinned_run


def _tell_uso(stage: Stage, by_machine: TapMigrationRun, by_uso: TapMigrationRun,
              pinned: TapMigrationRun) -> None:
    took = ", ".join(names(by_uso.acked & USO_BITS, VirtioFeature)) or "no USO"
    landed = "-" if pinned.destination_features is None else \
        _features(pinned.destination_features)
    stage.out.write(
        "  QEMU 10 on its own q35 (pc-q35-10.0) -> QEMU 7.2:\n"
        f"    migration: {by_machine.status}; uso-b's QEMU: {by_machine.destination_error}\n"
        "  QEMU 10 on pc-q35-7.2 with USO on -> QEMU 7.2 (the IONOS report):\n"
        f"    the guest acked {_features(by_uso.acked)}, including {took}\n"
        f"    migration: {by_uso.status}; uso-b's QEMU: {by_uso.destination_error}\n"
        f"  QEMU 10 pinned from {USO_COMMON} -> QEMU 7.2:\n"
        f"    the guest acked {_features(pinned.acked)} (no USO offered)\n"
        f"    migration: {pinned.status}, downtime {pinned.downtime_ms} ms; on uso-b: guest "
        f"features {landed}, device {pinned.destination_device!r}, VM "
        f"{pinned.destination_run_state}, TX ring kicked and served: {pinned.transmitted}\n\n")
    stage.expect(by_machine.status == "failed" and "Machine type received is 'pc-q35-10.0'"
                 in (by_machine.destination_error or ""),
                 "QEMU 7.2 should refuse the pc-q35-10.0 machine type")
    stage.expect(by_uso.acked & USO_BITS == USO_BITS, "the guest should take USO")
    stage.expect(by_uso.status == "failed" and (by_uso.destination_error or "").startswith(
        f"Features {int(by_uso.acked):#x} unsupported"), "QEMU 7.2 should refuse USO")
    stage.expect(pinned.status == "completed" and pinned.transmitted
                 and pinned.destination_features == pinned.acked,
                 "the pinned migration should complete with the guest running")


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
    Act("The story for real: QEMU, DPDK testpmd and the enforcement proxy", act_real_story),
    Act("On real OVS-DPDK: verified publishing and the host agents", act_ovs_story),
    Act("Tap backends and two QEMU generations: the USO failures of 2024-2026", act_uso_story),
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
