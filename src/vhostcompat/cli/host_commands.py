"""Host subcommands: ``publish``, ``assign``, ``record``.

A HOST is an OVSDB remote (``unix:PATH``, ``tcp:IP:PORT``, comma-separated
members) or a directory path (the embedded store; ``publish`` creates it).
"""

from __future__ import annotations

import argparse

from vhostcompat import manager
from vhostcompat.cli.common import (
    EXIT_OK,
    Subparsers,
    add_command,
    add_host_option,
    catalog_from,
    emit_json,
    emit_lines,
    emit_report,
    run,
)
from vhostcompat.cli.fleet_commands import add_fleet_option
from vhostcompat.errors import InputError
from vhostcompat.fleet.registry import ONE_SHOT_OWNER, Registration, publish_once
from vhostcompat.hoststore import HostRecord
from vhostcompat.ovsdb import looks_like_remote
from vhostcompat.ovsprobe import probe_ovs
from vhostcompat.probe import DEFAULT_TIMEOUT as PROBE_TIMEOUT
from vhostcompat.probe import ProbeResult, probe
from vhostcompat.profiles import Catalog
from vhostcompat.record import record_from_qmp
from vhostcompat.verify import DPDK_MAX_RING_SIZE, Verification, offered_profile


async def _probe(args: argparse.Namespace) -> ProbeResult:
    if args.probe is not None:
        return await probe(args.probe, timeout=args.probe_timeout)
    if not looks_like_remote(args.db):
        raise InputError(f"--probe-ovs needs an OVSDB remote (unix:PATH, tcp:IP:PORT), "
                         f"not {args.db!r}")
    return await probe_ovs(args.db, timeout=args.probe_timeout)


async def _publish_verified(args: argparse.Namespace, catalog: Catalog,
                            ) -> tuple[HostRecord, Verification]:
    result = await _probe(args)
    ring = args.max_ring_size
    if ring is None and args.probe_ovs:
        ring = DPDK_MAX_RING_SIZE
    return await manager.publish_verified(args.db, catalog, args.only,
                                          offered_profile(result, ring))


def publish(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    if args.fleet is not None or args.host is not None:
        return publish_fleet(args, catalog)
    if args.db is None:
        raise InputError("publish needs --db HOST (or --fleet REMOTES --host NAME)")
    if args.max_ring_size is not None and args.max_ring_size < 1:
        raise InputError(f"--max-ring-size must be positive, not {args.max_ring_size}")
    verification: Verification | None = None
    if args.probe is None and not args.probe_ovs:
        record = run(manager.publish(args.db, catalog, args.only))
    else:
        record, verification = run(_publish_verified(args, catalog))
    if args.json:
        document: dict[str, object] = {"host": record.address,
                                       "versions": list(record.versions)}
        if verification is not None:
            document.update(verification.to_json())
        emit_json(document)
    else:
        print(f"{record.address}: published {', '.join(record.versions)}")
        if verification is not None:
            emit_lines(verification.lines())
    return EXIT_OK


def publish_fleet(args: argparse.Namespace, catalog: Catalog) -> int:
    """``publish --fleet REMOTES --host NAME``: register once (and publish in --db first)."""
    if args.fleet is None or args.host is None:
        raise InputError("publish into a fleet needs both --fleet REMOTES and --host NAME")
    chosen = catalog.only(args.only) if args.only else catalog
    registration = Registration.of(args.host, args.db or "", chosen.profiles,
                                   args.owner or ONE_SHOT_OWNER + args.host)
    registration.check()
    if args.db is not None:
        run(manager.publish(args.db, catalog, args.only))
    run(publish_once(args.fleet, registration))
    if args.json:
        emit_json({"fleet": args.fleet, "host": args.host, "versions":
                   list(registration.versions)})
    else:
        print(f"{args.host}: registered in the fleet with {', '.join(registration.versions)}")
    return EXIT_OK


def assign(args: argparse.Namespace) -> int:
    run(manager.assign(args.db, args.iface, args.version))
    if args.json:
        emit_json({"host": args.db, "interface": args.iface, "version": args.version})
    else:
        print(f"{args.db}: interface {args.iface} in mode {args.version}")
    return EXIT_OK


def record(args: argparse.Namespace) -> int:
    report = run(record_from_qmp(args.db, args.iface, args.qmp, args.device))
    emit_report(args, report)
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "record", record,
        summary="record what a running VM's guest negotiated, read from QEMU over QMP",
        description="Read the guest-acked virtio features and the machine type of a "
                    "running QEMU (its QMP monitor socket) and record them on the "
                    "interface's row, where check-migration compares them with the "
                    "destination. For tap and vhost-net interfaces (no proxy sees them).")
    parser.add_argument("--qmp", required=True, metavar="SOCKET",
                        help="the QEMU's QMP monitor (a Unix socket)")
    add_host_option(parser, "--db")
    parser.add_argument("--iface", required=True, metavar="NAME")
    parser.add_argument("--device", default="net0", metavar="ID",
                        help="the virtio-net-pci device id (default net0)")

    parser = add_command(
        subparsers, "publish", publish, catalog=True,
        summary="host init: publish a catalog's versions and contents",
        description="Publish the catalog's versions (newest first) and their profiles in "
                    "a host's store, creating it if needed. Interfaces are kept. With "
                    "--probe or --probe-ovs only the profiles whose every feature and "
                    "limit the running backend honours are published; the others are "
                    "listed with the reasons (exit 1 and nothing written when none is). "
                    "With --fleet REMOTES --host NAME the versions are registered in the "
                    "fleet database once (and published in --db first, if given).")
    add_host_option(parser, "--db", required=False,
                    extra="; an embedded store is created if needed")
    add_fleet_option(parser)
    parser.add_argument("--host", metavar="NAME",
                        help="with --fleet: the host's fleet name (registered once, no "
                             "heartbeat after; --db, if given, becomes its remote)")
    parser.add_argument("--owner", metavar="ID",
                        help="with --fleet: the owner id to register as (default "
                             "publish:NAME, which an agent of that host may take over)")
    parser.add_argument("--only", action="append", metavar="VERSION",
                        help="publish only this version (repeatable; catalog order kept)")
    probed = parser.add_mutually_exclusive_group()
    probed.add_argument("--probe", metavar="SOCKET",
                        help="publish only what the vhost-user backend listening on SOCKET "
                             "honours (features, protocol features, queue pairs)")
    probed.add_argument("--probe-ovs", action="store_true",
                        help="publish only what the OVS-DPDK instance behind --db honours "
                             "(a transient dpdkvhostuserclient port is added and removed)")
    parser.add_argument("--max-ring-size", type=int, metavar="N",
                        help="the backend's largest ring (vhost-user cannot ask it; default "
                             f"{DPDK_MAX_RING_SIZE} with --probe-ovs, DPDK's limit; without "
                             "it profiles that declare max_ring_size are dropped)")
    parser.add_argument("--probe-timeout", type=float, default=PROBE_TIMEOUT,
                        metavar="SECONDS",
                        help=f"bound on each probe step (default {PROBE_TIMEOUT:g})")

    parser = add_command(
        subparsers, "assign", assign,
        summary="set an interface's compatibility version on a host",
        description="Write an interface's compatibility version into a host's store "
                    "(Interface options:vhost-compat-version). The host must publish it.")
    add_host_option(parser, "--db")
    parser.add_argument("--iface", required=True, metavar="NAME")
    parser.add_argument("--version", required=True, metavar="VERSION")
