"""How a fleet database runs: a Raft cluster of ovsdb-servers (3 members, or 5).

:func:`plan_cluster` lays out the members in one directory (``m1/``,
``m2/`` ...), each with its Raft port and its client port on 127.0.0.1;
:meth:`ClusterPlan.create_commands` are the ``ovsdb-tool create-cluster``
(first member) and ``join-cluster`` (the others) commands that make the
database files, and :meth:`MemberPlan.server_argv` the ``ovsdb-server``
command of each member. The fleet's address is the members' client remotes
as one multi-remote string (``tcp:127.0.0.1:P1,tcp:127.0.0.1:P2,...``): a
client tries each in turn and uses the one that is connected and leading.

``vhostcompat fleet init`` runs the create commands and prints the server
commands; :mod:`vhostcompat.lab.fleet` runs them as children for tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import InputError
from vhostcompat.fleet.schema import FLEET_DATABASE

PLAN_FILE = "cluster.json"
MAX_MEMBERS = 7


@dataclass(frozen=True)
class MemberPlan:
    """One member: its directory, Raft port and client port (127.0.0.1)."""

    index: int  # 1-based
    directory: Path
    raft_port: int
    client_port: int

    @property
    def name(self) -> str:
        return f"m{self.index}"

    @property
    def db_path(self) -> Path:
        return self.directory / "fleet.db"

    @property
    def socket_path(self) -> Path:
        return self.directory / "db.sock"

    @property
    def control_path(self) -> Path:
        return self.directory / "ctl"

    @property
    def raft_address(self) -> str:
        return f"tcp:127.0.0.1:{self.raft_port}"

    @property
    def remote(self) -> str:
        return f"tcp:127.0.0.1:{self.client_port}"

    def server_argv(self) -> list[str]:
        return ["ovsdb-server", str(self.db_path), f"--remote=ptcp:{self.client_port}:127.0.0.1",
                f"--remote=punix:{self.socket_path}", f"--unixctl={self.control_path}",
                f"--pidfile={self.directory / 'pid'}",
                f"--log-file={self.directory / 'ovsdb-server.log'}", "--no-chdir"]


@dataclass(frozen=True)
class ClusterPlan:
    members: tuple[MemberPlan, ...]

    @property
    def address(self) -> str:
        """The fleet address: every member's client remote, as one multi-remote string."""
        return ",".join(member.remote for member in self.members)

    def create_commands(self, schema: str) -> list[list[str]]:
        """``create-cluster`` on the first member, ``join-cluster`` on the others."""
        first = self.members[0]
        commands = [["ovsdb-tool", "create-cluster", str(first.db_path), schema,
                     first.raft_address]]
        for member in self.members[1:]:
            commands.append(["ovsdb-tool", "join-cluster", str(member.db_path), FLEET_DATABASE,
                             member.raft_address, first.raft_address])
        return commands

    def to_json(self) -> dict[str, object]:
        return {"address": self.address, "members": [
            {"name": member.name, "directory": str(member.directory),
             "raft": member.raft_address, "remote": member.remote,
             "server": member.server_argv()} for member in self.members]}

    def write(self, directory: Path) -> None:
        (directory / PLAN_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def plan_cluster(directory: Path, ports: list[tuple[int, int]]) -> ClusterPlan:
    """Members ``m1``... in ``directory``, one ``(raft_port, client_port)`` pair each."""
    if not 1 <= len(ports) <= MAX_MEMBERS:
        raise InputError(f"a fleet cluster has 1-{MAX_MEMBERS} members (3 or 5 recommended),"
                         f" not {len(ports)}")
    flat = [port for pair in ports for port in pair]
    if len(set(flat)) != len(flat) or not all(0 < port < 65536 for port in flat):
        raise InputError("every member needs two distinct ports in 1-65535")
    return ClusterPlan(tuple(MemberPlan(index, directory / f"m{index}", raft, client)
                             for index, (raft, client) in enumerate(ports, start=1)))


def consecutive_ports(base_port: int, members: int) -> list[tuple[int, int]]:
    """``base_port``, ``base_port + 1`` for m1 (Raft, client), the next two for m2, ..."""
    if not 0 < base_port <= 65535 - 2 * members:
        raise InputError(f"--base-port {base_port}: the {2 * members} ports from it must be "
                         "in 1-65535")
    return [(base_port + 2 * index, base_port + 2 * index + 1) for index in range(members)]
