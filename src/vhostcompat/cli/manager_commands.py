"""Orchestrator subcommands: ``select``, ``baseline``, ``provision``, ``check-migration``,
``matrix``."""

from __future__ import annotations

import argparse

from vhostcompat import manager
from vhostcompat.cli.common import (
    EXIT_NO,
    EXIT_OK,
    Subparsers,
    add_command,
    add_host_option,
    catalog_from,
    emit_json,
    emit_lines,
    emit_report,
    format_table,
    run,
)
from vhostcompat.errors import InputError
from vhostcompat.profiles.model import VERSION_PATTERN


def select(args: argparse.Namespace) -> int:
    report = run(manager.select(args.hosts, args.prefer))
    emit_report(args, report)
    return EXIT_OK if report.selection.found else EXIT_NO


def provision(args: argparse.Namespace) -> int:
    report = run(manager.provision(args.hosts, args.iface, args.prefer))
    emit_report(args, report)
    return EXIT_OK if report.selection.selection.found else EXIT_NO


def baseline(args: argparse.Namespace) -> int:
    if not VERSION_PATTERN.fullmatch(args.name):
        raise InputError(f"--name: invalid version string {args.name!r}")
    report = run(manager.baseline(args.hosts, args.name, args.description or ""))
    emit_report(args, report)
    return EXIT_OK


def check_migration(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    report = run(manager.check_migration(args.iface, args.source, args.destination, catalog))
    emit_report(args, report)
    return EXIT_OK if report.compatible else EXIT_NO


def matrix(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    report = run(manager.matrix(args.hosts, args.version, catalog))
    if args.json:
        emit_json(report.to_json())
    else:
        headers, rows = report.table()
        emit_lines([f"VM of {report.version}: can it move from a row's host to a "
                    "column's host?", *format_table(headers, rows),
                    "yes: publishes the version; content: a profile satisfies it by "
                    "content; no: neither; n/a: the source does not publish it"])
    return EXIT_OK if report.all_compatible else EXIT_NO


def _add_prefer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefer", metavar="VERSION",
                        help="pin this version (refused unless every host publishes it)")


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "select", select, summary="the first version every host supports",
        description="Select the first version (in the first host's preference order) "
                    "that every host publishes or satisfies by content (one of its "
                    "published profiles meets it under every key's rule). Exit 1 if none.")
    add_host_option(parser, "hosts", nargs="+")
    _add_prefer(parser)

    parser = add_command(
        subparsers, "baseline", baseline,
        summary="the common profile of several hosts' offers (a new catalog entry)",
        description="Intersect what the hosts offer (each host's first published profile, "
                    "e.g. one captured by `probe --tap --as-profile`): features and machine "
                    "types in common, the smallest limits. Printed as a catalog entry (or "
                    "--json) naming the newest common machine type; publish it to use it.")
    add_host_option(parser, "hosts", nargs="+")
    parser.add_argument("--name", required=True, metavar="VERSION",
                        help="the version string of the new profile")
    parser.add_argument("--description", metavar="TEXT")

    parser = add_command(
        subparsers, "provision", provision,
        summary="select for these hosts, then assign on each of them",
        description="Select a version for an interface that may run on any of these "
                    "hosts and write it into every host's store. Exit 1 if none.")
    add_host_option(parser, "hosts", nargs="+")
    parser.add_argument("--iface", required=True, metavar="NAME")
    _add_prefer(parser)

    parser = add_command(
        subparsers, "check-migration", check_migration, catalog=True,
        summary="can an interface live-migrate to another host?",
        description="Check, before migrating, that the destination supports the "
                    "interface's version (or an equivalent profile, by content) and what "
                    "the guest negotiated. Exit 0 compatible, 1 incompatible.")
    parser.add_argument("--iface", required=True, metavar="NAME")
    add_host_option(parser, "--from", dest="source")
    add_host_option(parser, "--to", dest="destination")

    parser = add_command(
        subparsers, "matrix", matrix, catalog=True,
        summary="which ordered host pairs can exchange a VM of a version",
        description="For every ordered pair of hosts, can a VM of this version move? "
                    "Exit 0 if every pair whose source publishes the version can, 1 "
                    "otherwise (or if no host publishes it).")
    add_host_option(parser, "hosts", nargs="+")
    parser.add_argument("--version", required=True, metavar="VERSION")
