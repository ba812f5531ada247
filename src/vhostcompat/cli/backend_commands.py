"""Backend subcommands: ``backend`` (the reference backend) and ``probe``.

``vhostcompat backend --socket PATH --profile VERSION [--catalog PATH]`` or
``... --features SPEC [--protocol-features SPEC] [--queues N] [--max-ring-size N]``
serves a vhost-user net backend offering exactly that, until SIGINT or
SIGTERM (exit 0, socket removed). Once it listens it prints
``listening on PATH`` and, with ``--ready-file``, writes the path there.

``vhostcompat probe SOCKET [--json] [--timeout S] [--set-owner]`` connects as
a frontend and reports what the backend offers and whether QEMU could
migrate a VM on it. ``vhostcompat probe --tap [--qemu BINARY] [--machine TYPE]
[--as-profile NAME]`` reports what this host offers a guest on a tap netdev
(kernel offloads, vhost-net, QEMU's offer on that machine type); with
``--as-profile`` it prints that offer as a catalog entry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from vhostcompat.backend import BackendConfig, serve_backend
from vhostcompat.cli.common import (
    EXIT_OK,
    Subparsers,
    add_command,
    catalog_from,
    emit_json,
    emit_report,
    run,
)
from vhostcompat.cli.listening import (
    add_listening_options,
    socket_permissions_from,
    stall_timeouts_from,
)
from vhostcompat.errors import InputError
from vhostcompat.features import parse_protocol, parse_virtio
from vhostcompat.files import write_atomically
from vhostcompat.probe import DEFAULT_TIMEOUT, probe
from vhostcompat.profiles.catalog import catalog_entry_text
from vhostcompat.profiles.model import VERSION_PATTERN, profile_to_mapping
from vhostcompat.tap import TUN_PATH
from vhostcompat.tapprobe import DEFAULT_MACHINE, probe_tap
from vhostcompat.transport import SocketPermissions, StallTimeouts

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
QEMU_ENV = "VHOSTCOMPAT_QEMU"
QEMU_DEFAULT = "qemu-system-x86_64"


def default_qemu() -> str:
    """The QEMU binary commands use unless told: $VHOSTCOMPAT_QEMU, else QEMU on PATH."""
    return os.environ.get(QEMU_ENV) or QEMU_DEFAULT


def config_from(args: argparse.Namespace) -> BackendConfig:
    """The offer the options describe: a profile, or features one by one."""
    detailed = {"--protocol-features": args.protocol_features, "--queues": args.queues,
                "--max-ring-size": args.max_ring_size}
    if args.profile is not None:
        if args.features is not None:
            raise InputError("give --profile or --features, not both")
        given = [name for name, value in detailed.items() if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} only go with --features (a profile "
                             "sets them)")
        return BackendConfig.from_profile(catalog_from(args).get(args.profile))
    if args.catalog:
        raise InputError("--catalog only goes with --profile")
    if args.features is None:
        raise InputError("give --profile VERSION or --features SPEC")
    protocol = None if args.protocol_features is None else \
        parse_protocol(args.protocol_features)
    return BackendConfig.from_options(parse_virtio(args.features), protocol,
                                      queue_pairs=args.queues,
                                      max_ring_size=args.max_ring_size)


def _write_ready_file(path: Path, socket_path: Path) -> None:
    # Written whole then renamed: a script polling for it never reads half a
    # line, and a planted link is never followed (write_atomically).
    try:
        write_atomically(path, f"{socket_path}\n".encode())
    except OSError as error:
        raise InputError(f"--ready-file {path}: cannot write: "
                         f"{error.strerror or error}") from None


def _check_ready_file(path: Path) -> None:
    """Refuse, before anything listens, a ready file that could never be written."""
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"--ready-file {path}: directory {directory} does not exist")
    if path.is_dir():
        raise InputError(f"--ready-file {path}: is a directory")


async def _serve_until_stopped(config: BackendConfig, socket_path: Path,
                               ready_file: Path | None, timeouts: StallTimeouts,
                               permissions: SocketPermissions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, stop.set)
    try:
        async with serve_backend(config, socket_path, timeouts=timeouts,
                                 permissions=permissions):
            print(f"listening on {socket_path}", flush=True)
            if ready_file is not None:
                _write_ready_file(ready_file, socket_path)
            await stop.wait()
    finally:
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)


def backend(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.ready_file is not None:
        _check_ready_file(args.ready_file)
    # The server logs config.warnings() at WARNING: shown whatever -v says.
    timeouts = stall_timeouts_from(args)
    permissions = socket_permissions_from(args)
    run(_serve_until_stopped(config, Path(args.socket), args.ready_file, timeouts,
                             permissions))
    return EXIT_OK


def _tap_probe(args: argparse.Namespace) -> int:
    if args.socket is not None or args.set_owner:
        raise InputError("--tap probes the tap backend: no SOCKET, no --set-owner")
    if args.as_profile is not None and not VERSION_PATTERN.fullmatch(args.as_profile):
        raise InputError(f"--as-profile: invalid version string {args.as_profile!r}")
    result = run(probe_tap(args.qemu or default_qemu(), args.machine or DEFAULT_MACHINE,
                           tun_path=args.tun))
    if args.as_profile is not None:
        profile = result.as_profile(args.as_profile)
        if args.json:
            emit_json(profile_to_mapping(profile))
        else:
            sys.stdout.write(catalog_entry_text(profile, result.comments()))
        return EXIT_OK
    emit_report(args, result)
    return EXIT_OK


def probe_command(args: argparse.Namespace) -> int:
    if args.tap:
        return _tap_probe(args)
    tap_only = [name for name, value in (("--qemu", args.qemu), ("--machine", args.machine),
                                          ("--as-profile", args.as_profile)) if value]
    if tap_only:
        raise InputError(f"{', '.join(tap_only)} only go with --tap")
    if args.socket is None:
        raise InputError("give a vhost-user SOCKET to probe, or --tap")
    if not args.timeout > 0:
        raise InputError(f"--timeout must be positive, not {args.timeout}")
    result = run(probe(args.socket, timeout=args.timeout, set_owner=args.set_owner))
    emit_report(args, result)
    return EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "backend", backend, catalog=True, json=False,
        summary="run the reference vhost-user net backend",
        description="Serve a vhost-user net backend on a Unix socket that offers exactly "
                    "a profile's features and limits (or the ones given), until SIGINT or "
                    "SIGTERM. Use -v to see connections and negotiation, -vv for every "
                    "message.")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="Unix socket to listen on (QEMU connects to it)")
    parser.add_argument("--profile", metavar="VERSION",
                        help="offer this compatibility version's features and limits")
    parser.add_argument("--features", metavar="SPEC",
                        help="virtio features to offer: names, 'bit N' or 0x..., "
                             "comma separated")
    parser.add_argument("--protocol-features", metavar="SPEC",
                        help="vhost-user protocol features to offer (default: none)")
    parser.add_argument("--queues", type=_positive, metavar="N",
                        help="queue pairs (GET_QUEUE_NUM; default 1)")
    parser.add_argument("--max-ring-size", type=_positive, metavar="N",
                        help="largest SET_VRING_NUM accepted (default 32768)")
    parser.add_argument("--ready-file", type=Path, metavar="PATH",
                        help="write the socket path here once listening")
    add_listening_options(parser)

    parser = add_command(
        subparsers, "probe", probe_command,
        summary="ask a vhost-user backend (or this host's tap backend) what it offers",
        description="Connect to a vhost-user backend as a frontend and report its features, "
                    "protocol features, queue pairs and whether QEMU could migrate a VM on "
                    "it. The backend is left unconfigured (SET_OWNER only with --set-owner). "
                    "With --tap: the tap offloads the kernel accepts, /dev/vhost-net, and "
                    "the virtio-net features a QEMU binary and machine type offer a guest "
                    "on a tap netdev (QEMU started paused; needs root).")
    parser.add_argument("socket", metavar="SOCKET", nargs="?",
                        help="the backend's Unix socket")
    parser.add_argument("--tap", action="store_true",
                        help="probe the kernel's tap backend and QEMU's offer on it")
    parser.add_argument("--qemu", metavar="BINARY",
                        help=f"with --tap: the QEMU binary (default ${QEMU_ENV} or "
                             f"{QEMU_DEFAULT})")
    parser.add_argument("--machine", metavar="TYPE",
                        help=f"with --tap: the machine type (default {DEFAULT_MACHINE}, the "
                             "binary's newest q35)")
    parser.add_argument("--as-profile", metavar="NAME",
                        help="with --tap: print the offer as a catalog entry of version NAME")
    parser.add_argument("--tun", type=Path, default=TUN_PATH, metavar="PATH",
                        help=f"with --tap: the tun/tap control device (default {TUN_PATH})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--set-owner", action="store_true",
                        help="also send SET_OWNER (and check the backend still answers)")
