"""An asyncio client of our own for OVSDB (RFC 7047), as ovsdb-server speaks it.

::

    from vhostcompat.ovsdb import connect, Select, Update, Wait

    async with await connect("unix:/run/openvswitch/db.sock,tcp:127.0.0.1:6640",
                             database="Open_vSwitch", timeout=5.0,
                             required_columns={"Interface": ("name", "options")}) as client:
        results = await client.transact(
            Wait("Interface", where=[("name", "==", "vhu0")], columns=["options"],
                 rows=[{"options": {}}]),
            Update("Interface", where=[("name", "==", "vhu0")], row={"options": {"a": "b"}}))
        async for update in client.monitor({"Interface": ["name", "options"]}):
            ...  # {table: {Uuid: (old_row | None, new_row | None)}}, update.initial

Modules: :mod:`~.remotes` (``unix:PATH``, ``tcp:IP:PORT``, lists),
:mod:`~.values` (atoms, sets as ``frozenset``, maps as ``dict``, :class:`Uuid`,
:class:`NamedUuid`), :mod:`~.schema` (``get_schema`` and the check on
connect), :mod:`~.operations` (typed operations and their results),
:mod:`~.jsonrpc` (framing of untrusted bytes), :mod:`~.connection` (one
stream: calls, echo, notifications), :mod:`~.monitor` (updates as an async
iterator), :mod:`~.client` (lifecycle, members, reconnect, transactions),
:mod:`~.errors`.
"""

from vhostcompat.ovsdb.client import (
    DEFAULT_DATABASE,
    HeldConnection,
    OvsdbClient,
    Runstate,
    connect,
    read_once,
    transact_held,
    transact_once,
)
from vhostcompat.ovsdb.errors import (
    OvsdbCommitError,
    OvsdbConflictError,
    OvsdbConnectionError,
    OvsdbError,
    OvsdbProtocolError,
    OvsdbRemoteError,
    OvsdbRequestError,
    OvsdbSchemaError,
    OvsdbTimeoutError,
)
from vhostcompat.ovsdb.monitor import Monitor, MonitorUpdate
from vhostcompat.ovsdb.operations import (
    Comment,
    Delete,
    Insert,
    Mutate,
    Operation,
    Select,
    Update,
    Wait,
)
from vhostcompat.ovsdb.remotes import Remote, looks_like_remote, parse_remotes
from vhostcompat.ovsdb.values import NamedUuid, Uuid

__all__ = [
    "DEFAULT_DATABASE",
    "Comment",
    "Delete",
    "HeldConnection",
    "Insert",
    "Monitor",
    "MonitorUpdate",
    "Mutate",
    "NamedUuid",
    "Operation",
    "OvsdbClient",
    "OvsdbCommitError",
    "OvsdbConflictError",
    "OvsdbConnectionError",
    "OvsdbError",
    "OvsdbProtocolError",
    "OvsdbRemoteError",
    "OvsdbRequestError",
    "OvsdbSchemaError",
    "OvsdbTimeoutError",
    "Remote",
    "Runstate",
    "Select",
    "Update",
    "Uuid",
    "Wait",
    "connect",
    "looks_like_remote",
    "parse_remotes",
    "read_once",
    "transact_held",
    "transact_once",
]
