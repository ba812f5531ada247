"""libvirt subcommands: ``libvirt-hook`` (the qemu hook libvirtd runs, and its
installation), and the ``--metadata`` form of ``libvirt-xml`` (the domain
``<metadata>`` element): :func:`add_metadata_options` and
:func:`libvirt_metadata`, which ``libvirt-xml`` (in catalog_commands, beside
its ``--profile`` form) dispatches to.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vhostcompat.cli.common import (
    EXIT_OK,
    Subparsers,
    add_catalog_option,
    add_command,
    catalog_from,
    run,
)
from vhostcompat.errors import InputError
from vhostcompat.libvirt.calls import DEFAULT_HOOKS_DIR, NAMESPACE, HookCall, HookUsageError

if TYPE_CHECKING:
    from vhostcompat.libvirt.metadata import InterfaceMetadata

# The rest of vhostcompat.libvirt (and the manager) is imported where it is used:
# libvirt runs the hook on every start, stop and release of every domain, and
# all but two of those calls only need the arguments checked (0.31 s a call
# when everything was imported first).


async def _entries(args: argparse.Namespace) -> tuple[InterfaceMetadata, ...]:
    from vhostcompat.libvirt.metadata import InterfaceMetadata  # noqa: PLC0415
    from vhostcompat.manager import read_host  # noqa: PLC0415

    macs: list[str] = args.mac or []
    versions: list[str] = args.version or []
    ifaces: list[str] | None = args.iface
    if not macs:
        raise InputError("at least one --mac MAC --version VERSION pair is needed")
    if len(macs) != len(versions):
        raise InputError(f"{len(macs)} --mac but {len(versions)} --version: give them "
                         "in pairs")
    if ifaces is not None and len(ifaces) != len(macs):
        raise InputError(f"{len(ifaces)} --iface for {len(macs)} --mac: give one per "
                         "interface, or none")
    if args.negotiated_from is not None and ifaces is None:
        raise InputError("--negotiated-from needs --iface (the names in that host's store)")
    entries = [InterfaceMetadata(mac, version, ifaces[position] if ifaces else None)
               for position, (mac, version) in enumerate(zip(macs, versions, strict=True))]
    catalog = catalog_from(args)
    for entry in entries:
        catalog.get(entry.version)  # an unknown version is refused here, not at VM start
    if args.negotiated_from is not None:
        record = await read_host(args.negotiated_from)
        entries = [dataclasses.replace(entry, negotiated=record.interface(
            entry.iface).negotiated) if entry.iface else entry for entry in entries]
    return tuple(entries)


def libvirt_metadata(args: argparse.Namespace) -> int:
    from vhostcompat.libvirt.metadata import DomainMetadata  # noqa: PLC0415

    metadata = DomainMetadata(run(_entries(args)))
    sys.stdout.write(metadata.to_xml())
    return EXIT_OK


def _read_domain_xml() -> bytes:
    from vhostcompat.libvirt.domain import MAX_DOMAIN_XML, DomainXmlError  # noqa: PLC0415

    data = sys.stdin.buffer.read(MAX_DOMAIN_XML + 1)
    if len(data) > MAX_DOMAIN_XML:
        raise DomainXmlError(f"domain XML on stdin is larger than {MAX_DOMAIN_XML} bytes")
    return data


def libvirt_hook(args: argparse.Namespace) -> int:
    arguments: list[str] = args.arguments
    if args.install:
        from vhostcompat.libvirt.hook import install_hook  # noqa: PLC0415

        if arguments:
            raise HookUsageError("--install takes no hook arguments")
        path = install_hook(args.db, Path(args.hooks_dir or DEFAULT_HOOKS_DIR), args.catalog or ())
        print(path)
        print("vhostcompat: libvirtd discovers hooks when it starts: restart it",
              file=sys.stderr)
        return EXIT_OK
    if args.hooks_dir is not None:
        raise HookUsageError("--hooks-dir goes with --install")
    call = HookCall.parse(arguments)
    if not call.checks_domain:
        return EXIT_OK
    from vhostcompat.libvirt.hook import admit_domain  # noqa: PLC0415

    run(admit_domain(_read_domain_xml(), args.db, lambda: catalog_from(args), call.domain))
    return EXIT_OK


def add_metadata_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`libvirt_metadata` (for ``libvirt-xml --metadata`` too)."""
    parser.add_argument("--mac", action="append", metavar="MAC",
                        help="an interface's MAC address (repeatable, paired with --version)")
    parser.add_argument("--version", action="append", metavar="VERSION",
                        help="that interface's compatibility version")
    parser.add_argument("--iface", action="append", metavar="NAME",
                        help="that interface's name in the host stores (default: the "
                             "socket path's last component); one per --mac, or none")
    parser.add_argument("--negotiated-from", metavar="HOST",
                        help="carry what each interface negotiated, as this host's store "
                             "records it (needs --iface)")


METADATA_HELP = ("with --metadata: print the namespaced element for a domain's <metadata>, "
                 "one entry per vhost-user interface (by MAC) with its compatibility "
                 "version; put it in the domain XML, or set it with virsh metadata DOMAIN "
                 f"{NAMESPACE} --key vhostcompat --set XML. Each version must be in the "
                 "catalog.")


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "libvirt-hook", libvirt_hook, json=False,
        summary="the libvirt qemu hook: refuse a domain this host cannot run",
        description="Run by libvirtd as a qemu hook (DOMAIN OPERATION SUB-OPERATION EXTRA, "
                    "domain XML on stdin). On 'prepare begin' and 'migrate begin' checks "
                    "that this host can run each interface named in the domain's "
                    "vhostcompat metadata and assigns its mode in the host store; other "
                    "calls exit 0. Exit 1 refuses the domain (the reason on stderr, shown "
                    "by virsh), 2 bad input. --install writes the hook script.")
    parser.add_argument("--db", required=True, metavar="HOST", help="this host's store")
    parser.add_argument("--install", action="store_true",
                        help="write the hook script (atomically, mode 0755) and exit")
    parser.add_argument("--hooks-dir", metavar="DIR", default=None,
                        help=f"where --install writes it (default {DEFAULT_HOOKS_DIR})")
    add_catalog_option(parser)
    parser.add_argument("arguments", nargs="*", metavar="ARG",
                        help="libvirt's arguments: DOMAIN OPERATION SUB-OPERATION EXTRA")
