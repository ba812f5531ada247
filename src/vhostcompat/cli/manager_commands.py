"""Orchestrator subcommands: ``versions``, ``select``, ``baseline``, ``provision``,
``check-migration``, ``targets``, ``matrix``: :mod:`vhostcompat.manager` verbs.

Every one asks its hosts concurrently (``--concurrency``, ``--timeout``; a
progress bar on a terminal) and prints the verb's report (``--json``: one
document). Exit statuses: 0 yes/success, 1 a clear no, 2 bad input or a host
that could not be read (named, with its reason).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vhostcompat import manager
from vhostcompat.cli.common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    Handler,
    Subparsers,
    add_command,
    add_host_option,
    catalog_from,
    emit_json,
    emit_lines,
    emit_report,
    format_table,
)
from vhostcompat.cli.fanout import add_fanout_options, progress_bar, record_source
from vhostcompat.errors import InputError
from vhostcompat.manager import run  # uvloop: hundreds of short connections
from vhostcompat.profiles.model import VERSION_PATTERN


def versions(args: argparse.Namespace) -> int:
    with progress_bar(args, "versions") as progress:
        report = run(manager.versions(args.hosts, records=record_source(args),
                                             progress=progress))
    emit_report(args, report)
    warn_failures(report.failures)
    return EXIT_OK if report.complete else EXIT_ERROR


def select(args: argparse.Namespace) -> int:
    with progress_bar(args, "select") as progress:
        report = run(manager.select(args.hosts, args.prefer, records=record_source(args),
                                           progress=progress))
    emit_report(args, report)
    return EXIT_OK if report.selection.found else EXIT_NO


def provision(args: argparse.Namespace) -> int:
    with progress_bar(args, "provision") as progress:
        if args.for_migration is not None:
            report = run(manager.provision_for_migration(
                args.iface, args.for_migration, args.hosts, catalog_from(args),
                strict=args.strict, records=record_source(args), progress=progress))
        else:
            if args.strict:
                raise InputError("--strict goes with --for-migration")
            report = run(manager.provision(args.hosts, args.iface, args.prefer,
                                           records=record_source(args), progress=progress))
    emit_report(args, report)
    return EXIT_OK if report.done else EXIT_NO


def baseline(args: argparse.Namespace) -> int:
    if not VERSION_PATTERN.fullmatch(args.name):
        raise InputError(f"--name: invalid version string {args.name!r}")
    with progress_bar(args, "baseline") as progress:
        report = run(manager.baseline(args.hosts, args.name, args.description or "",
                                      records=record_source(args), progress=progress))
    emit_report(args, report)
    return EXIT_OK


def check_migration(args: argparse.Namespace) -> int:
    report = run(manager.check_migration(args.iface, args.source, args.destination,
                                         catalog_from(args), strict=args.strict,
                                         records=record_source(args)))
    emit_report(args, report)
    return report.exit_status


def targets(args: argparse.Namespace) -> int:
    with progress_bar(args, "targets") as progress:
        report = run(manager.targets(args.iface, args.source, args.hosts, catalog_from(args),
                                     strict=args.strict, records=record_source(args),
                                     progress=progress))
    emit_report(args, report)
    warn_failures([target.failure for target in report.targets if target.failure is not None])
    return report.exit_status


def matrix(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    with progress_bar(args, "matrix") as progress:
        report = run(manager.matrix(args.hosts, args.version, catalog,
                                    records=record_source(args), progress=progress))
    if args.svg is not None:
        write_svg(Path(args.svg), manager.matrix_svg(report))
    if args.json:
        emit_json(report.to_json())
    else:
        headers, rows = report.table()
        subject = f"a VM of {report.version}" if report.version else \
            "a VM of some version both support"
        emit_lines([f"can {subject} move from a row's host to a column's host?",
                    *format_table(headers, rows), *report.summary_lines()])
    warn_failures(report.failures)
    return report.exit_status


def warn_failures(failures: Sequence[manager.HostFailure]) -> None:
    """One line on stderr per host that could not be read (the report says the rest)."""
    for failure in failures:
        print(f"vhostcompat: {failure.reason}", file=sys.stderr)


def write_svg(path: Path, document: str) -> None:
    try:
        path.write_text(document, encoding="utf-8")
    except OSError as error:
        raise InputError(f"--svg {path}: cannot write: {error.strerror or error}") from None


def _add_prefer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefer", metavar="VERSION",
                        help="pin this version (refused unless every host supports it)")


def _add_strict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="accept only compatible and compatible-by-content (the "
                             "destination holds the interface's whole mode), not "
                             "compatible-for-running-guest")


def _add_interface_on_source(parser: argparse.ArgumentParser) -> None:
    """``--iface NAME --from HOST [--strict]``: the interface a verdict is about."""
    parser.add_argument("--iface", required=True, metavar="NAME")
    add_host_option(parser, "--from", dest="source")
    _add_strict(parser)


def _fleet_command(subparsers: Subparsers, name: str, handler: Handler, *,
                   summary: str, description: str, catalog: bool = False,
                   hosts: bool = True) -> argparse.ArgumentParser:
    parser = add_command(subparsers, name, handler, summary=summary, description=description,
                         catalog=catalog)
    if hosts:
        add_host_option(parser, "hosts", nargs="+")
    add_fanout_options(parser)
    return parser



def register(subparsers: Subparsers) -> None:
    _fleet_command(subparsers, "versions", versions, summary="the versions each host publishes",
                   description="List the versions each host publishes. A host that cannot "
                               "be read is listed with its reason (exit 2).")

    parser = _fleet_command(
        subparsers, "select", select, summary="the first version every host supports",
        description="Select the first version (in the first host's preference order) "
                    "that every host publishes or satisfies by content (one of its "
                    "published profiles meets it under every key's rule). Exit 1 if none, "
                    "2 if a host cannot be read.")
    _add_prefer(parser)

    parser = _fleet_command(
        subparsers, "baseline", baseline,
        summary="the common profile of several hosts' offers (a new catalog entry)",
        description="Intersect what the hosts offer (each host's first published profile, "
                    "e.g. one captured by `probe --tap --as-profile`): features and machine "
                    "types in common, the smallest limits. Printed as a catalog entry (or "
                    "--json) naming the newest common machine type; publish it to use it.")
    parser.add_argument("--name", required=True, metavar="VERSION",
                        help="the version string of the new profile")
    parser.add_argument("--description", metavar="TEXT")

    parser = _fleet_command(
        subparsers, "provision", provision, catalog=True,
        summary="select for these hosts, then assign on all of them or none",
        description="Select a version for an interface that may run on any of these "
                    "hosts and write it into every host's store, each write conditional on "
                    "what was read; if a host fails, the hosts already written are restored "
                    "(conditionally too) and the host is named. A re-run writes nothing. "
                    "With --for-migration SOURCE: assign on each HOST (a destination) the "
                    "mode its migration verdict names (for compatible-for-running-guest, "
                    "the destination's mode that covers the guest). Exit 1 if there is no "
                    "common version (or a destination cannot take the guest), 2 on a "
                    "conflict, an unreachable host or bad input.")
    parser.add_argument("--iface", required=True, metavar="NAME")
    _add_prefer(parser)
    add_host_option(parser, "--for-migration", required=False,
                    extra=": the source of a migration to the HOSTs")
    _add_strict(parser)

    parser = _fleet_command(
        subparsers, "check-migration", check_migration, catalog=True, hosts=False,
        summary="can an interface live-migrate to another host?",
        description="Check, before migrating, that the destination takes the interface: "
                    "compatible (it publishes the version), compatible-by-content, "
                    "compatible-for-running-guest (what the guest negotiated and the limits "
                    "in use fit one of its modes), else incompatible naming every blocking "
                    "item. Exit 0 for a yes, 1 incompatible, 2 unknown or unreachable.")
    _add_interface_on_source(parser)
    add_host_option(parser, "--to", dest="destination")

    parser = _fleet_command(
        subparsers, "targets", targets, catalog=True,
        summary="where an interface's VM can go, among candidate hosts",
        description="For each candidate: the verdict from the interface's mode (static) "
                    "and, once it has run, from what its guest negotiated (live). "
                    "Unreachable candidates are listed with their reason. Exit 0 if some "
                    "candidate can take it, 2 if none can but one was unreachable or "
                    "unknown, else 1.")
    _add_interface_on_source(parser)

    parser = _fleet_command(
        subparsers, "matrix", matrix, catalog=True,
        summary="which ordered host pairs can exchange VMs, and the migration domains",
        description="For every ordered pair of hosts: can a VM of --version (without it: of "
                    "any version the source supports) move? Migration domains: maximal "
                    "groups where every ordered pair works for one shared version "
                    "(maximal cliques of the mutual-compatibility graph). --svg FILE draws "
                    "it. Exit 0 if every applicable pair can, 1 otherwise, 2 if a host "
                    "cannot be read.")
    parser.add_argument("--version", metavar="VERSION")
    parser.add_argument("--svg", metavar="FILE", help="also draw the matrix as an SVG file")
