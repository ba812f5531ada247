"""What the OVSDB tests share: the real-server requirement, ports, a misbehaving listener.

``listener`` is a plain Unix socket server of the test's own that accepts and
then sends exactly the bytes it is given (none: it never answers), to play a
hung or hostile OVSDB server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers import require_tool
from vhostcompat.lab.ovsdb import OvsdbServer


def require_ovsdb() -> None:
    require_tool("ovsdb-server", "ovsdb-tool", "ovs-vsctl")


@contextlib.asynccontextmanager
async def listener(path: Path, send: bytes = b"") -> AsyncIterator[list[bytes]]:
    """Accept on ``path``; send ``send`` to each client; collect what they send."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if send:
            writer.write(send)
        while data := await reader.read(65536):
            received.append(data)

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield received
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def write_schema(path: Path, name: str, tables: dict[str, dict[str, str]]) -> Path:
    """A tiny schema file: ``tables`` maps a table to {column: base type}."""
    document = {"name": name, "version": "1.0.0", "tables": {
        table: {"columns": {column: {"type": kind} for column, kind in columns.items()},
                "isRoot": True}
        for table, columns in tables.items()}}
    path.write_text(json.dumps(document))
    return path


async def add_vhost_port(server: OvsdbServer, name: str = "vhu0",
                         bridge: str = "br0") -> None:
    """A dpdkvhostuserclient port as an operator adds one, with libvirt's external_ids."""
    await server.vsctl("--may-exist", "add-br", bridge, "--", "add-port", bridge, name, "--",
                       "set", "Interface", name, "type=dpdkvhostuserclient",
                       f"options:vhost-server-path=/run/{name}.sock",
                       "external_ids:iface-id=abc")


async def vsctl_get(server: OvsdbServer, *arguments: str) -> str:
    """``ovs-vsctl --no-wait get ...``, stripped."""
    return (await server.vsctl("get", *arguments)).strip()
