"""``vhostcompat fleet schema|init|status``: the fleet database itself.

* ``fleet schema`` prints the shipped schema (``fleet.ovsschema``);
* ``fleet init --dir DIR [--members 3] [--base-port P]`` makes the member
  databases of a Raft cluster on 127.0.0.1 (``ovsdb-tool create-cluster``
  / ``join-cluster``), writes ``DIR/cluster.json`` and prints each member's
  ``ovsdb-server`` command and the fleet address;
* ``fleet status --fleet REMOTES`` asks every member what it says of itself
  in ``_Server`` (model, connected, leader): exit 0 when one leads, 2 when
  none does (below quorum, or unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
from pathlib import Path

from vhostcompat.cli.common import EXIT_OK, Subparsers, add_command, emit_json, run
from vhostcompat.errors import InputError
from vhostcompat.fleet.cluster import PLAN_FILE, consecutive_ports, plan_cluster
from vhostcompat.fleet.errors import FleetUnavailableError
from vhostcompat.fleet.registry import DEFAULT_STALE_AFTER
from vhostcompat.fleet.schema import schema_path, schema_text
from vhostcompat.fleet.session import MemberState, failure_text, member_state
from vhostcompat.fleet.source import FleetRecords
from vhostcompat.ovsdb import OvsdbClient, OvsdbError, parse_remotes

DEFAULT_BASE_PORT = 6641
TOOL_TIMEOUT = 30.0
FLEET_HELP = ("the fleet database: its members' remotes as one comma-separated list "
              "(tcp:127.0.0.1:P1,tcp:127.0.0.1:P2,...)")


def add_fleet_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--fleet", metavar="REMOTES", required=required, help=FLEET_HELP)


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """A manager verb's ``--fleet`` (hosts are then fleet names) and ``--stale-after``."""
    parser.add_argument("--fleet", metavar="REMOTES",
                        help=FLEET_HELP + "; the HOSTs are then fleet host names, all read "
                             "from it in one go")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER,
                        metavar="SECONDS",
                        help="with --fleet: a host whose heartbeat is older is never treated "
                             f"as compatible (default {DEFAULT_STALE_AFTER:g})")


def fleet_source(args: argparse.Namespace) -> FleetRecords:
    interface = getattr(args, "iface", None)
    return FleetRecords(args.fleet, (interface,) if interface else (), args.stale_after,
                        timeout=args.timeout)


def schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return EXIT_OK


def init(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    plan = plan_cluster(directory, consecutive_ports(args.base_port, args.members))
    if any(member.db_path.exists() for member in plan.members):
        raise InputError(f"{directory}: a fleet database already exists there")
    for member in plan.members:
        member.directory.mkdir(parents=True, exist_ok=True)
    for command in plan.create_commands(schema_path()):
        try:
            subprocess.run(command, check=True, capture_output=True, text=True,
                           timeout=TOOL_TIMEOUT)
        except FileNotFoundError:
            raise InputError("ovsdb-tool not found (install openvswitch-common)") from None
        except subprocess.CalledProcessError as error:
            raise InputError(f"{' '.join(command[:2])} failed: "
                             f"{error.stderr.strip()[:300]}") from None
    plan.write(directory)
    if args.json:
        emit_json(plan.to_json())
        return EXIT_OK
    print(f"# {len(plan.members)} members in {directory} ({PLAN_FILE}); start each one:")
    for member in plan.members:
        print(shlex.join(member.server_argv()) + " &")
    print(f"# the fleet address:\n{plan.address}")
    return EXIT_OK


async def _states(address: str) -> list[tuple[str, MemberState | None, str]]:
    async def one(remote: str) -> tuple[str, MemberState | None, str]:
        client = OvsdbClient(remote, "_Server", timeout=2.0, reconnect=False)
        try:
            await client.connect()
            state = await member_state(client)
            return remote, state, state.describe()
        except OvsdbError as error:
            return remote, None, failure_text(error)
        finally:
            await client.close()

    return list(await asyncio.gather(*(one(str(remote))
                                       for remote in parse_remotes(address))))


def status(args: argparse.Namespace) -> int:
    states = run(_states(args.fleet))
    if args.json:
        emit_json({"members": [{"remote": remote, "answered": state is not None,
                                "model": state.model if state else None,
                                "connected": state.connected if state else False,
                                "leader": state.leader if state else False,
                                "state": text} for remote, state, text in states]})
    else:
        for remote, _state, text in states:
            print(f"{remote}: {text}")
    if not any(state is not None and state.usable for _remote, state, _text in states):
        raise FleetUnavailableError(args.fleet, [(remote, text)
                                                 for remote, _state, text in states])
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "fleet", help="the fleet database: schema, a Raft cluster on loopback, its state",
        description="The fleet inventory: one Raft-clustered OVSDB that hosts register into.")
    commands = parser.add_subparsers(dest="fleet_command", metavar="COMMAND",
                                     parser_class=type(parser))
    commands.required = True
    add_command(commands, "schema", schema, json=False, summary="print the fleet schema",
                description="Print the fleet database schema shipped with vhostcompat.")
    parser = add_command(
        commands, "init", init, summary="make the member databases of a fleet cluster",
        description="Create a Raft cluster's member databases on 127.0.0.1 (ovsdb-tool "
                    "create-cluster, join-cluster) and print each member's ovsdb-server "
                    "command and the fleet address.")
    parser.add_argument("--dir", required=True, metavar="DIR")
    parser.add_argument("--members", type=int, default=3, metavar="N",
                        help="cluster size (default 3; 3 or 5 recommended)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="P",
                        help=f"member N uses ports P+2(N-1) (Raft) and P+2(N-1)+1 (clients);"
                             f" default {DEFAULT_BASE_PORT}")
    parser = add_command(
        commands, "status", status, summary="each member's own view: connected, leader",
        description="Ask every member of the fleet what its _Server database says. Exit 2 "
                    "when no member is connected and leading.")
    add_fleet_option(parser, required=True)
