"""Proxy subcommands: ``proxy`` (run the enforcement proxy) and ``proxy-status``.

``vhostcompat proxy`` runs one interface's compatibility mode between a
front-end and an unmodified back-end until SIGTERM/SIGINT (exit 0). The mode
is ``--profile VERSION`` from the catalog, or the interface's assigned
version read from a host store (``--db HOST --iface NAME``; the host's
published profile is used, no catalog needed). With ``--db`` and ``--iface``
the negotiated state is also written to the interface's row, where
``check-migration`` finds it; ``--status-file`` writes the status as JSON,
atomically, for ``vhostcompat proxy-status PATH``; ``--stats-file`` the
relay time of the latest messages (:mod:`vhostcompat.proxy.timings`), at
exit and on SIGUSR1.

The proxy logs its offers and refusals at INFO (stderr); ``-v`` adds DEBUG
(every message, ``-->``/``<--``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal

from vhostcompat import manager
from vhostcompat.cli.common import (
    EXIT_NO,
    EXIT_OK,
    Subparsers,
    add_catalog_option,
    add_command,
    add_host_option,
    catalog_from,
    emit_report,
    run,
)
from vhostcompat.cli.listening import (
    add_listening_options,
    add_realtime_option,
    socket_permissions_from,
    stall_timeouts_from,
)
from vhostcompat.errors import HostError, InputError
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import (
    Endpoint,
    HostStoreSink,
    ProxyOptions,
    ProxyPolicy,
    ProxyServer,
    ProxyState,
    SocketRole,
    StatusBoard,
    StatusFile,
    read_status_file,
)
from vhostcompat.proxy.relay import REPLY_TIMEOUT
from vhostcompat.proxy.server import BACKEND_TIMEOUT
from vhostcompat.proxy.status import StatusSink
from vhostcompat.proxy.timings import RelayTimings
from vhostcompat.proxy.warm import warm_up
from vhostcompat.realtime import realtime_scheduling

_log = logging.getLogger("vhostcompat.proxy")


async def _assigned_profile(address: str, interface: str) -> CompatProfile:
    record = await manager.read_host(address)
    version = record.interface(interface).version
    if version is None:
        raise InputError(f"host {address}: interface {interface} has no compatibility "
                         "version assigned (vhostcompat assign / provision)")
    profile = record.profile(version)
    if profile is None:
        raise HostError(f"host {address}: interface {interface} is assigned {version}, "
                        "which the host does not publish")
    return profile


async def _resolve_profile(args: argparse.Namespace) -> CompatProfile:
    if (args.db is None) != (args.iface is None):
        raise InputError("--db and --iface go together")
    if args.profile is None:
        if args.db is None:
            raise InputError("the mode is needed: --profile VERSION, or --db HOST --iface NAME")
        return await _assigned_profile(args.db, args.iface)
    profile = catalog_from(args).get(args.profile)
    if args.db is not None:
        assigned = await _assigned_profile(args.db, args.iface)
        if assigned.version != profile.version:
            raise InputError(f"host {args.db}: interface {args.iface} is assigned "
                             f"{assigned.version}, not {profile.version}")
    return profile


async def _serve(args: argparse.Namespace) -> int:
    profile = await _resolve_profile(args)
    frontend = Endpoint.parse(args.frontend, SocketRole.SERVER)
    backend = Endpoint.parse(args.backend, SocketRole.CLIENT)
    options = ProxyOptions(reply_timeout=args.reply_timeout,
                           backend_timeout=args.backend_timeout,
                           timeouts=stall_timeouts_from(args),
                           permissions=socket_permissions_from(args))
    sinks: list[StatusSink] = []
    if args.status_file is not None:
        sinks.append(StatusFile(args.status_file))
    if args.db is not None:
        sinks.append(HostStoreSink(args.db, args.iface))
    board = StatusBoard(profile.version, interface=args.iface, frontend=str(frontend),
                        backend=str(backend), sinks=sinks)
    board.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    policy = ProxyPolicy(profile)
    # Before listening: the first QEMU (and a migration's destination) meets
    # a relay whose code paths already ran (proxy.warm).
    await warm_up(policy)
    # What start-up and warming allocated lives as long as the process: out
    # of the collector's way, so that a collection in the middle of a
    # migration's device start does not walk it all.
    gc.collect()
    gc.freeze()
    server = ProxyServer(policy, frontend, backend, options=options,
                         board=board, name=args.iface or "proxy",
                         timings=RelayTimings(cpu=args.stats_file is not None))
    if args.stats_file is not None:
        loop.add_signal_handler(signal.SIGUSR1, _write_stats, server, args.stats_file)
    try:
        with realtime_scheduling(args.realtime_priority):
            async with server:
                await stop.wait()
            _log.info("stopping")
        board.set_state(ProxyState.EXITED, "stopped by a signal")
        if args.stats_file is not None:
            _write_stats(server, args.stats_file)
    except (InputError, HostError) as error:
        board.set_state(ProxyState.FAILED, str(error))
        raise
    finally:
        for signum in (*signals, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        await board.close()
    return EXIT_OK


def _write_stats(server: ProxyServer, path: str) -> None:
    try:
        server.timings.write(path)
    except OSError as error:
        _log.error("--stats-file %s: cannot write: %s", path, error.strerror or error)


def proxy(args: argparse.Namespace) -> int:
    if args.verbose == 0:
        # A daemon says what it decides: offers, refusals, connections.
        _log.setLevel(logging.INFO)
    return run(_serve(args))


def proxy_status(args: argparse.Namespace) -> int:
    status = read_status_file(args.status_file)
    emit_report(args, status)
    return EXIT_OK if status.state.healthy else EXIT_NO


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "proxy", proxy, json=False,
        summary="run an interface's compatibility mode in front of any vhost-user back-end",
        description="Relay vhost-user between a front-end (QEMU) and an unmodified back-end "
                    "in a compatibility mode: GET_FEATURES answers backend ∩ profile, "
                    "GET_PROTOCOL_FEATURES likewise, GET_QUEUE_NUM min(backend, profile); "
                    "a SET_FEATURES outside the offer or a ring above the profile's "
                    "limits is refused (logged, connection closed). Fds pass through. "
                    "Runs until SIGTERM/SIGINT. A PATH takes a :server or :client suffix "
                    "for the role the proxy takes on it (defaults: it listens on the "
                    "front-end path and connects to the back-end path).")
    parser.add_argument("--profile", metavar="VERSION",
                        help="the compatibility version (default: the interface's, with --db)")
    add_catalog_option(parser)
    parser.add_argument("--frontend", required=True, metavar="PATH[:server|:client]",
                        help="the front-end's socket (default role: server, QEMU connects)")
    parser.add_argument("--backend", required=True, metavar="PATH[:client|:server]",
                        help="the back-end's socket (default role: client, the back-end "
                             "listens)")
    add_host_option(parser, "--db", required=False,
                    extra=": read the interface's mode there, record what it negotiated")
    parser.add_argument("--iface", metavar="NAME", help="the interface's name in the host store")
    parser.add_argument("--status-file", metavar="PATH",
                        help="write the status here as JSON (atomically, on every change)")
    parser.add_argument("--stats-file", metavar="PATH",
                        help="write every relayed message's relay time here (JSON, with "
                             "p50/p99 per request) when the proxy exits or gets SIGUSR1")
    parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT, metavar="SECONDS",
                        help=f"close the front-end when the back-end leaves a request "
                             f"unanswered this long (default {REPLY_TIMEOUT:g})")
    parser.add_argument("--backend-timeout", type=float, default=BACKEND_TIMEOUT,
                        metavar="SECONDS",
                        help=f"how long to wait for the back-end once a front-end connected "
                             f"(default {BACKEND_TIMEOUT:g})")
    add_listening_options(parser)
    add_realtime_option(parser, "the proxy")

    parser = add_command(
        subparsers, "proxy-status", proxy_status,
        summary="what a proxy's interface negotiated, from its status file",
        description="Print the status a proxy writes with --status-file: mode, state, "
                    "features offered and acked, queue pairs and ring sizes, refusals. "
                    "Exit 1 when the last connection was refused or failed.")
    parser.add_argument("status_file", metavar="PATH")
