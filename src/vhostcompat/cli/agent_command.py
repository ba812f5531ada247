"""``vhostcompat agent``: the host daemon, in the foreground until SIGTERM/SIGINT.

It monitors the Interface table of the host's Open vSwitch database and
runs every ``dpdkvhostuserclient`` interface that has
``options:vhost-compat-version`` in that mode (see
:mod:`vhostcompat.agent.daemon`). Logs are one line per event on stderr,
``key=value`` or ``--log-format json``. Exit 0 after a signal; 2 when the
database cannot be reached at start or the state directory is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from vhostcompat.agent.daemon import Agent, AgentConfig
from vhostcompat.agent.log import configure
from vhostcompat.cli.common import EXIT_OK, Subparsers, add_command, run
from vhostcompat.cli.listening import add_realtime_option
from vhostcompat.errors import InputError
from vhostcompat.fleet.presence import FleetOptions, owner_of
from vhostcompat.fleet.registry import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_STALE_AFTER,
    check_host_name,
)
from vhostcompat.ovsdb import looks_like_remote, parse_remotes
from vhostcompat.profiles import load_catalog_or_default
from vhostcompat.proxy import ProxyOptions
from vhostcompat.proxy.relay import REPLY_TIMEOUT
from vhostcompat.proxy.server import BACKEND_TIMEOUT
from vhostcompat.realtime import realtime_scheduling

DEFAULT_STATE_DIR = "/var/lib/vhostcompat/agent"


async def _serve(config: AgentConfig, realtime_priority: int | None) -> int:
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        with realtime_scheduling(realtime_priority):
            await agent.run(stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return EXIT_OK


def agent(args: argparse.Namespace) -> int:
    configure(args.log_format, logging.DEBUG if args.verbose > 1 else logging.INFO)
    if not looks_like_remote(args.db):
        raise InputError(f"--db must be an OVSDB remote (unix:PATH, tcp:IP:PORT), "
                         f"not {args.db!r}")
    catalog = load_catalog_or_default(args.catalog) if args.catalog else None
    state_dir = Path(args.state_dir).absolute()
    config = AgentConfig(args.db, state_dir, catalog,
                         ProxyOptions(reply_timeout=args.reply_timeout,
                                      backend_timeout=args.backend_timeout),
                         fleet=fleet_options(args, state_dir))
    return run(_serve(config, args.realtime_priority))


def fleet_options(args: argparse.Namespace, state_dir: Path) -> FleetOptions | None:
    """``--fleet REMOTES --host-name NAME``: register the host there (both or neither)."""
    if (args.fleet is None) != (args.host_name is None):
        raise InputError("--fleet and --host-name go together")
    if args.fleet is None:
        return None
    parse_remotes(args.fleet)
    check_host_name(args.host_name)
    if not 0 < args.heartbeat_interval < args.stale_after:
        raise InputError(f"--heartbeat-interval {args.heartbeat_interval:g} must be positive "
                         f"and below --stale-after {args.stale_after:g}")
    return FleetOptions(args.fleet, args.host_name, owner_of(state_dir),
                        args.heartbeat_interval, args.stale_after)


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "agent", agent, json=False, catalog=True,
        summary="host daemon: run each OVS-DPDK vhost-user interface in its mode",
        description="Monitor the Interface table of a host's Open vSwitch database. Every "
                    "dpdkvhostuserclient interface with options:vhost-compat-version runs "
                    "in that mode behind a proxy: OVS connects to the agent's socket, the "
                    "proxy to QEMU's (kept in external_ids:vhost-compat-frontend-path); "
                    "status and what was negotiated are written on the row. A version "
                    "this host does not publish is refused on the row, and OVS is kept "
                    "off QEMU's socket. Runs until SIGTERM/SIGINT.")
    parser.add_argument("--db", required=True, metavar="REMOTE",
                        help="the host's OVSDB: unix:PATH, tcp:IP:PORT, or a comma "
                             "separated list of them")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                        help="the agent's sockets (one per interface) and journal "
                             f"(default {DEFAULT_STATE_DIR}; keep it short: socket paths "
                             "are limited to 107 bytes)")
    parser.add_argument("--fleet", metavar="REMOTES",
                        help="also register this host in the fleet database at REMOTES (its "
                             "members, comma separated), keep its heartbeat fresh, and apply "
                             "the modes provisioned there")
    parser.add_argument("--host-name", metavar="NAME", help="with --fleet: the host's name")
    parser.add_argument("--heartbeat-interval", type=float, default=DEFAULT_HEARTBEAT_INTERVAL,
                        metavar="S", help="with --fleet: seconds between heartbeats (default "
                                          f"{DEFAULT_HEARTBEAT_INTERVAL:g})")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER, metavar="S",
                        help="with --fleet: another agent's row may be taken over once its "
                             f"heartbeat is this old (default {DEFAULT_STALE_AFTER:g})")
    parser.add_argument("--log-format", choices=("kv", "json"), default="kv",
                        help="one line per event: key=value (default) or JSON")
    parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT, metavar="S",
                        help=f"per proxy: close QEMU's connection when OVS leaves a request "
                             f"unanswered this long (default {REPLY_TIMEOUT:g})")
    parser.add_argument("--backend-timeout", type=float, default=BACKEND_TIMEOUT, metavar="S",
                        help=f"per proxy: how long QEMU's connection waits for OVS "
                             f"(default {BACKEND_TIMEOUT:g})")
    add_realtime_option(parser, "the agent's event loop, which relays for every proxy,")
