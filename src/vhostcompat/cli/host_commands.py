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
    emit_report,
    run,
)
from vhostcompat.cli.fleet_commands import add_fleet_option
from vhostcompat.errors import InputError
from vhostcompat.fleet.registry import ONE_SHOT_OWNER, Registration, publish_once
from vhostcompat.profiles import Catalog
from vhostcompat.record import record_from_qmp


def publish(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    if args.fleet is not None or args.host is not None:
        return publish_fleet(args, catalog)
    if args.db is None:
        raise InputError("publish needs --db HOST (or --fleet REMOTES --host NAME)")
    record = run(manager.publish(args.db, catalog, args.only))
    if args.json:
        emit_json({"host": record.address, "versions": list(record.versions)})
    else:
        print(f"{record.address}: published {', '.join(record.versions)}")
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
                    "a host's store, creating it if needed. Interfaces are kept.")
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

    parser = add_command(
        subparsers, "assign", assign,
        summary="set an interface's compatibility version on a host",
        description="Write an interface's compatibility version into a host's store "
                    "(Interface options:vhost-compat-version). The host must publish it.")
    add_host_option(parser, "--db")
    parser.add_argument("--iface", required=True, metavar="NAME")
    parser.add_argument("--version", required=True, metavar="VERSION")
