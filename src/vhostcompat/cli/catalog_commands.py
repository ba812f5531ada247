"""Catalog subcommands: ``profiles``, ``profile show``, ``profile diff``, ``qemu-args``,
``libvirt-xml``."""

from __future__ import annotations

import argparse
import sys

from vhostcompat.cli.common import (
    EXIT_NO,
    EXIT_OK,
    Subparsers,
    add_command,
    catalog_from,
    emit_json,
    emit_lines,
    format_table,
    run,
)
from vhostcompat.cli.libvirt_commands import (
    METADATA_HELP,
    add_metadata_options,
    libvirt_metadata,
)
from vhostcompat.errors import InputError
from vhostcompat.features import ProtocolFeature, VirtioFeature, names
from vhostcompat.libvirtxml import libvirt_pinning
from vhostcompat.profiles import (
    CatalogEntry,
    describe_value,
    diff_profiles,
    feature_labels,
    profile_to_mapping,
)
from vhostcompat.qemuargs import FrontendPinning, pin_frontend, qemu_target


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def list_profiles(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    if args.json:
        emit_json({"profiles": [{**profile_to_mapping(entry.profile), "source": entry.source}
                                for entry in catalog.entries]})
        return EXIT_OK
    rows = []
    for entry in catalog.entries:
        profile = entry.profile
        protocol = profile.protocol_features
        rows.append([profile.version, f"{int(profile.virtio_features):#x}",
                     "-" if protocol is None else f"{int(protocol):#x}",
                     _limit(profile.max_queue_pairs), _limit(profile.max_ring_size),
                     entry.source])
    emit_lines(format_table(["VERSION", "VIRTIO FEATURES", "PROTOCOL", "QUEUE PAIRS",
                             "RING SIZE", "SOURCE"], rows))
    return EXIT_OK


def _show_lines(entry: CatalogEntry) -> list[str]:
    profile = entry.profile
    lines = [f"version: {profile.version}"]
    if profile.description:
        lines.append(f"description: {profile.description}")
    lines.append(f"source: {entry.source}")
    for spec, value in profile.items():
        if isinstance(value, VirtioFeature | ProtocolFeature):
            lines.append(f"{spec.name}: {int(value):#x} ({spec.rule.value})")
            lines.extend(f"  {label}" for label in feature_labels(value))
        else:
            lines.append(f"{spec.name}: {describe_value(spec, value)} ({spec.rule.value})")
    return lines


def show_profile(args: argparse.Namespace) -> int:
    entry = catalog_from(args).entry(args.version)
    if args.json:
        profile = entry.profile
        document = {**profile_to_mapping(profile), "source": entry.source,
                    "virtio_feature_names": names(profile.virtio_features, VirtioFeature)}
        if profile.protocol_features is not None:
            document["protocol_feature_names"] = names(profile.protocol_features,
                                                       ProtocolFeature)
        emit_json(document)
    else:
        emit_lines(_show_lines(entry))
    return EXIT_OK


def diff(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    first, second = catalog.get(args.first), catalog.get(args.second)
    differences = diff_profiles(first, second)
    if args.json:
        emit_json({"first": first.version, "second": second.version,
                   "identical": not differences,
                   "differences": [{"key": item.key, "first": item.first,
                                    "second": item.second, "only_first": list(item.only_first),
                                    "only_second": list(item.only_second)}
                                   for item in differences]})
    elif differences:
        emit_lines([f"{first.version} -> {second.version}",
                    *(f"  {item.describe()}" for item in differences)])
    else:
        print(f"{first.version} and {second.version} have the same content")
    return EXIT_NO if differences else EXIT_OK


def _pinning(args: argparse.Namespace) -> FrontendPinning:
    """``--profile`` pinned for ``--qemu``/``--machine`` (QEMU 7.2's table without)."""
    profile = catalog_from(args).get(args.profile)
    if args.machine is not None and args.qemu is None:
        raise InputError("--machine goes with --qemu BINARY")
    target = None if args.qemu is None else run(qemu_target(args.qemu, profile, args.machine))
    return pin_frontend(profile, target)


def libvirt_xml(args: argparse.Namespace) -> int:
    if args.metadata:
        if args.profile is not None or args.json:
            raise InputError("--metadata takes --mac/--version pairs, not --profile or --json")
        return libvirt_metadata(args)
    if args.profile is None:
        raise InputError("libvirt-xml needs --profile VERSION (the <driver> pinning) or "
                         "--metadata (the domain <metadata> element)")
    if args.mac or args.version or args.iface or args.negotiated_from:
        raise InputError("--mac, --version, --iface and --negotiated-from go with --metadata")
    result = libvirt_pinning(_pinning(args))
    if args.json:
        emit_json(result.to_json())
    else:
        sys.stdout.write(result.xml)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_OK if result.satisfiable else EXIT_NO


def qemu_args(args: argparse.Namespace) -> int:
    pinning = _pinning(args)
    if args.json:
        emit_json(pinning.to_json())
    else:
        print(pinning.argument())
        for note in pinning.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_OK if pinning.satisfiable else EXIT_NO


def register(subparsers: Subparsers) -> None:
    add_command(subparsers, "profiles", list_profiles, catalog=True,
                summary="list the catalog's compatibility versions, newest first",
                description="List the catalog's compatibility versions in preference order.")

    profile = subparsers.add_parser("profile", help="show or compare profiles",
                                    description="Show or compare compatibility profiles.")
    actions = profile.add_subparsers(dest="profile_command", metavar="ACTION",
                                     parser_class=type(profile))
    actions.required = True
    show = add_command(actions, "show", show_profile, catalog=True,
                       summary="one profile's features and limits",
                       description="Show one profile's features and limits.")
    show.add_argument("version")
    compare = add_command(
        actions, "diff", diff, catalog=True,
        summary="how two profiles differ (exit 1 if they do)",
        description="Show how two profiles differ; exit 0 if equivalent, 1 if not.")
    compare.add_argument("first", metavar="VERSION1")
    compare.add_argument("second", metavar="VERSION2")

    pin = add_command(
        subparsers, "qemu-args", qemu_args, catalog=True,
        summary="QEMU virtio-net-pci properties that pin the frontend to a profile",
        description="Print the virtio-net-pci properties (QEMU 7.2) that keep the guest "
                    "from being offered what the profile lacks; notes go to stderr. "
                    "Exit 1 if QEMU cannot honour the profile's limits.")
    pin.add_argument("--profile", required=True, metavar="VERSION")
    _add_target_options(pin)

    xml = add_command(
        subparsers, "libvirt-xml", libvirt_xml, catalog=True,
        summary="libvirt domain XML (<driver>, <qemu:override>) pinning the frontend",
        description="Print the interface <driver> element (libvirt 9.0's attributes) and, "
                    "for what that schema cannot express (indirect_desc, USO ...), a "
                    "<qemu:override> block, as a partial <domain>; notes go to stderr. Exit "
                    "1 if QEMU cannot honour the profile. " + METADATA_HELP[0].upper()
                    + METADATA_HELP[1:])
    xml.add_argument("--profile", metavar="VERSION",
                     help="the profile to pin the frontend to (the <driver> form)")
    _add_target_options(xml)
    xml.add_argument("--metadata", action="store_true",
                     help="print the domain <metadata> element instead (see below)")
    add_metadata_options(xml)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qemu", metavar="BINARY",
                        help="use the properties this QEMU binary really has, and its "
                             "machine type's defaults (without it: QEMU 7.2's table)")
    parser.add_argument("--machine", metavar="TYPE",
                        help="with --qemu: the machine type to run (default: the newest q35 "
                             "type the profile allows and the binary has)")
