"""The asyncio OVSDB client: connect (to one member of a remote list), transact, monitor.

Lifecycle (:class:`Runstate`), after QEMU's QMP library::

    IDLE --connect()--> CONNECTING --(a member answered, schema checked)--> RUNNING
    RUNNING --connection lost, reconnect=True--> CONNECTING (backoff) --> RUNNING
    RUNNING --connection lost, reconnect=False--> IDLE
    any --close()--> DISCONNECTING --> IDLE

* :meth:`OvsdbClient.connect` tries each member of the remote list in turn
  (after a loss, starting with the member after the one that failed) and
  raises one :class:`OvsdbConnectionError` naming every member and its cause
  when none answers. On each member: open the stream, ``get_schema``, check
  the database's name and the tables and columns the caller needs
  (``required_columns``); a database that does not fit raises
  :class:`OvsdbSchemaError` at once (another member would not fit better).
* With ``known_schema`` (:func:`~vhostcompat.ovsdb.schema.known_schema`: the
  types of the columns the caller uses, known in advance) there is no
  ``get_schema`` (17 KB per vswitch server): the first ``transact`` on the
  connection, in the same write as ``read``, starts with one ``select`` per
  required table naming exactly its required columns (matching no row), and
  the server itself refuses an unknown database, table or column. Only then
  is ``get_schema`` asked, to name what is missing in the same
  :class:`OvsdbSchemaError` as above. Values are decoded with the known
  types, so a value whose shape does not fit them is refused
  (:class:`OvsdbProtocolError`); a column outside the known schema cannot
  be read.
* Every call has a timeout (``timeout=`` per call, else the client's):
  :class:`OvsdbTimeoutError` when the server accepts and never answers.
* When the connection drops, every pending call fails at once with
  :class:`OvsdbConnectionError` naming the call (a transaction's outcome is
  then unknown: it may have been committed). With ``reconnect=True``
  (default) the client reconnects in the background with a bounded,
  doubling backoff; calls made meanwhile wait for it within their timeout;
  monitors are re-established and re-deliver the full contents (see
  :mod:`vhostcompat.ovsdb.monitor`).
* :meth:`OvsdbClient.transact` returns one result dict per operation
  (``{"rows": [...]}``, ``{"uuid": Uuid}``, ``{"count": n}``, ``{}``) or raises
  :class:`OvsdbCommitError` (an operation's error, or the commit's, read from
  the extra result element after the last operation's) /
  :class:`OvsdbConflictError` (a ``wait`` that failed).
* ``echo`` requests from the server (its inactivity probe) are answered;
  with ``probe_interval`` the client probes a silent server the same way
  and drops (then, with ``reconnect``, re-establishes) a connection whose
  server does not answer within the timeout (a hung or vanished peer).

Use ``async with await connect(remotes, ...) as client`` (or ``async with
OvsdbClient(...) as client``, which connects on entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from vhostcompat.ovsdb.connection import Connection, Request, ResultHook
from vhostcompat.ovsdb.errors import (
    OvsdbCommitError,
    OvsdbConflictError,
    OvsdbConnectionError,
    OvsdbError,
    OvsdbProtocolError,
    OvsdbRequestError,
    OvsdbSchemaError,
    OvsdbTimeoutError,
)
from vhostcompat.ovsdb.jsonrpc import MAX_DEPTH, MAX_MESSAGE_BYTES, encode_json
from vhostcompat.ovsdb.monitor import Monitor
from vhostcompat.ovsdb.operations import (
    Condition,
    DecodedRow,
    Operation,
    Result,
    Select,
    Wait,
    decode_result,
)
from vhostcompat.ovsdb.remotes import Remote, format_remotes, parse_remotes
from vhostcompat.ovsdb.schema import DatabaseSchema, RequiredColumns, check_schema
from vhostcompat.ovsdb.values import Uuid, ValueShapeError

_log = logging.getLogger("vhostcompat.ovsdb")

DEFAULT_DATABASE = "Open_vSwitch"
DEFAULT_TIMEOUT = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
NO_ROW = Uuid("00000000-0000-0000-0000-000000000000")  # the known-schema check's where
SCHEMA_REQUEST_ID = "schema"  # fixed, so identical schemas arrive byte for byte (jsonrpc)
WAIT_FAILED = "timed out"


class Runstate(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    RUNNING = "running"
    DISCONNECTING = "disconnecting"


class OvsdbClient:
    """A client of one database, reachable at one or more remotes; see the module docstring."""

    def __init__(self, remotes: str | Sequence[Remote], database: str = DEFAULT_DATABASE, *,
                 timeout: float = DEFAULT_TIMEOUT,
                 required_columns: RequiredColumns | None = None,
                 known_schema: DatabaseSchema | None = None,
                 reconnect: bool = True, backoff_max: float = BACKOFF_MAX,
                 probe_interval: float | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_depth: int = MAX_DEPTH) -> None:
        self.remotes = parse_remotes(remotes) if isinstance(remotes, str) else tuple(remotes)
        if not self.remotes:
            raise ValueError("no remotes")
        if timeout <= 0:
            raise ValueError("the timeout must be positive")
        self.address = format_remotes(self.remotes)
        self.database = database
        self.timeout = timeout
        self.required_columns: RequiredColumns = dict(required_columns or {})
        self.known_schema = known_schema
        self._checks: tuple[Select, ...] = ()
        if known_schema is not None:
            try:
                check_schema("the known schema", known_schema, database, self.required_columns)
            except OvsdbSchemaError as error:
                raise ValueError(str(error)) from None
            self._checks = known_schema_checks(self.required_columns)
        self.reconnect = reconnect
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        self._prober: asyncio.Task[None] | None = None
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth
        self.runstate = Runstate.IDLE
        self.connections_made = 0
        self._connection: Connection | None = None
        self._schema: DatabaseSchema | None = None
        self._next_member = 0
        self._connected = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._establishing = False
        self._last_loss: OvsdbError | None = None
        self._monitors: dict[str, Monitor] = {}
        self._monitor_ids = itertools.count(1)
        self._echo_replies = 0

    def __repr__(self) -> str:
        return f"<OvsdbClient {self.address} {self.database} {self.runstate.value}>"

    # -- state ------------------------------------------------------------------

    @property
    def remote(self) -> str | None:
        """The member connected to now, or None."""
        return None if self._connection is None else self._connection.remote

    @property
    def pending_calls(self) -> int:
        """Calls sent on the current connection and not answered yet."""
        return 0 if self._connection is None else self._connection.pending_calls

    @property
    def last_error(self) -> OvsdbError | None:
        """Why the last connection ended, or the last reconnect attempt failed."""
        return self._last_loss

    @property
    def schema(self) -> DatabaseSchema:
        if self._schema is None:
            raise OvsdbConnectionError(f"{self.address}: not connected yet")
        return self._schema

    @property
    def echo_replies(self) -> int:
        """How many ``echo`` requests of the server this client answered."""
        current = self._connection.echo_replies if self._connection is not None else 0
        return self._echo_replies + current

    def _require(self, *states: Runstate) -> None:
        if self.runstate not in states:
            raise OvsdbConnectionError(f"{self.address}: client is {self.runstate.value}, "
                                       f"needs {' or '.join(state.value for state in states)}")

    # -- connecting -------------------------------------------------------------

    async def connect(self, *, read: Sequence[Select] = (),
                      retry_for: float = 0.0) -> list[Result]:
        """Connect to the first member that answers; see the module docstring.

        ``read``: selects sent in the same write as ``get_schema`` (one round
        trip instead of two, for one-shot readers), their results returned
        once the schema passed the check. Only selects: nothing is written
        before the schema is known to fit.

        ``retry_for``: keep trying (the reconnect backoff) for up to that many
        seconds while no member answers (a daemon starting before its
        ovsdb-server); a database that does not fit is refused at once.
        """
        self._require(Runstate.IDLE)
        if not all(isinstance(operation, Select) for operation in read):
            raise ValueError("only selects travel with get_schema")
        self.runstate = Runstate.CONNECTING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        delay = BACKOFF_MIN
        try:
            while True:
                try:
                    return await self._establish(read)
                except OvsdbConnectionError as error:
                    self._last_loss = error
                    if loop.time() + delay > deadline:
                        raise
                await asyncio.sleep(delay)  # the backoff itself, not a wait for a condition
                delay = min(delay * 2, self.backoff_max)
        except BaseException:
            self.runstate = Runstate.IDLE
            raise

    async def _establish(self, read: Sequence[Select] = ()) -> list[Result]:
        """Reach one member, check its schema, resume the monitors; RUNNING on return."""
        causes: list[tuple[str, BaseException]] = []
        count = len(self.remotes)
        self._establishing = True
        try:
            for offset in range(count):
                index = (self._next_member + offset) % count
                remote = self.remotes[index]
                try:
                    connection, results = await self._open(remote, read)
                    self._next_member = index
                    self._install(connection)
                    # RUNNING before the monitors' initial rows reach their readers.
                    self.runstate = Runstate.RUNNING
                    await self._resume_monitors(connection)
                except (OvsdbConnectionError, OvsdbTimeoutError, OvsdbProtocolError, OSError,
                        TimeoutError) as error:
                    causes.append((str(remote), error))
                    await self._drop_current()
                    continue
                if self._connection is connection:
                    self._connected.set()
                    return results
                causes.append((str(remote), connection.lost or OvsdbConnectionError("lost")))
                self.runstate = Runstate.CONNECTING
        finally:
            self._establishing = False
        raise OvsdbConnectionError("cannot connect to OVSDB", causes)

    async def _drop_current(self) -> None:
        self.runstate = Runstate.CONNECTING
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _open(self, remote: Remote, read: Sequence[Select]
                    ) -> tuple[Connection, list[Result]]:
        async with asyncio.timeout(self.timeout):
            connection = await Connection.open(
                remote, on_notify=self._notify, on_lost=self._lost,
                max_message_bytes=self.max_message_bytes, max_depth=self.max_depth)
        try:
            if self.known_schema is not None:
                results = await self._open_known(connection, self.known_schema, read)
            else:
                requests = [Request("get_schema", [self.database], SCHEMA_REQUEST_ID)]
                if read:
                    requests.append(Request("transact", self._transact_params(read)))
                answers = await connection.call_many(requests, self.timeout,
                                                     return_exceptions=True)
                self._schema = await self._checked_schema(connection, answers[0])
                results = self._results(connection.remote, read, answers[1]) if read else []
        except BaseException:
            await connection.close()
            raise
        return connection, results

    async def _open_known(self, connection: Connection, schema: DatabaseSchema,
                          read: Sequence[Select]) -> list[Result]:
        """The checks and ``read`` in one transact; what the server refuses is named
        from its ``get_schema`` (asked only then)."""
        operations = (*self._checks, *read)
        if not operations:
            return []
        try:
            reply = await connection.call("transact", self._transact_params(operations),
                                          self.timeout)
        except OvsdbRequestError:  # an unknown database
            reply = None
        refusal = _refusal(reply, len(self._checks))
        if refusal is not None:
            await self._checked_schema(connection, await self._schema_answer(connection))
            raise OvsdbSchemaError(connection.remote, f"the server refused the columns "
                                   f"used here: {refusal}")
        self._schema = schema
        return self._results(connection.remote, operations, reply)[len(self._checks):]

    async def _schema_answer(self, connection: Connection) -> object:
        [answer] = await connection.call_many(
            [Request("get_schema", [self.database], SCHEMA_REQUEST_ID)], self.timeout,
            return_exceptions=True)
        return answer

    async def _checked_schema(self, connection: Connection, answer: object) -> DatabaseSchema:
        if isinstance(answer, OvsdbRequestError):
            databases = await connection.call("list_dbs", [], self.timeout)
            # _Server is ovsdb-server's own database, not one a host serves.
            served = ", ".join(str(name)[:60] for name in databases if name != "_Server"
                               ) if isinstance(databases, list) else "?"
            raise OvsdbSchemaError(connection.remote, f"no database {self.database!r} "
                                   f"(it serves: {served or 'none'})")
        if isinstance(answer, BaseException):
            raise answer
        try:
            schema = _schema_of(answer)
        except ValueShapeError as error:
            raise OvsdbProtocolError(connection.remote, f"get_schema answer: {error}") from None
        check_schema(connection.remote, schema, self.database, self.required_columns)
        return schema

    def _install(self, connection: Connection) -> None:
        self._connection = connection
        self.connections_made += 1
        _log.info("%s: connected to %s", connection.remote, self.database)
        if self.probe_interval is not None:
            self._prober = asyncio.get_running_loop().create_task(self._probe(connection))

    async def _probe(self, connection: Connection) -> None:
        """Our own inactivity probe: a server silent for ``probe_interval`` gets an echo;
        no reply within the timeout drops the connection (and so reconnects)."""
        assert self.probe_interval is not None
        loop = asyncio.get_running_loop()
        while connection.lost is None:
            idle = loop.time() - connection.last_received
            if idle < self.probe_interval:
                await asyncio.sleep(self.probe_interval - idle)  # a timer, not a poll
                continue
            try:
                await connection.call("echo", [], self.timeout)
            except OvsdbTimeoutError:
                await connection.close(OvsdbConnectionError(
                    f"{connection.remote}: silent for {idle:.1f} s and no reply to an echo "
                    f"probe within {self.timeout:g} s"))
            except OvsdbError:
                return

    def _lost(self, connection: Connection, reason: OvsdbError) -> None:
        """The connection ended (called once per connection, from inside it)."""
        self._echo_replies += connection.echo_replies
        if connection is not self._connection:
            return
        if self._prober is not None and self._prober is not asyncio.current_task():
            self._prober.cancel()
        self._prober = None
        self._connection = None
        self._connected.clear()
        self._last_loss = reason
        if self.runstate is not Runstate.RUNNING or self._establishing:
            return  # connect() / the reconnect loop sees it and goes on
        _log.warning("%s", reason)
        self._next_member = (self._next_member + 1) % len(self.remotes)
        if self.reconnect:
            self.runstate = Runstate.CONNECTING
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
        else:
            self.runstate = Runstate.IDLE
            for monitor in self._monitors.values():
                monitor.end(OvsdbConnectionError(f"monitor ended: {reason}"))

    async def _reconnect(self) -> None:
        delay = BACKOFF_MIN
        while self.runstate is Runstate.CONNECTING:
            try:
                await self._establish()
            except OvsdbError as error:
                _log.warning("%s (retrying in %g s)", error, delay)
                self._last_loss = error
                await asyncio.sleep(delay)  # the backoff itself, not a wait for a condition
                delay = min(delay * 2, self.backoff_max)
                continue
            return

    async def close(self) -> None:
        """Close the connection; pending calls fail, monitors end, reconnecting stops."""
        if self.runstate is Runstate.IDLE and self._connection is None:
            self._end_monitors()
            return
        self.runstate = Runstate.DISCONNECTING
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        connection, self._connection = self._connection, None
        self._connected.clear()
        if connection is not None:
            await connection.close()
        self._end_monitors()
        self.runstate = Runstate.IDLE

    def _end_monitors(self) -> None:
        for monitor in self._monitors.values():
            monitor.end()
        self._monitors.clear()

    async def __aenter__(self) -> Self:
        if self.runstate is Runstate.IDLE:
            await self.connect()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    # -- calls ------------------------------------------------------------------

    async def call(self, method: str, params: list[Any], timeout: float | None = None) -> Any:
        """One JSON-RPC call on the current connection (waiting for a reconnect if needed)."""
        return await self._call(method, params, timeout)

    async def _call(self, method: str, params: list[Any], timeout: float | None,
                    on_result: ResultHook | None = None) -> Any:
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        connection = await self._current(method, limit)
        return await connection.call(method, params, max(deadline - loop.time(), 0.0),
                                     on_result=on_result)

    async def _current(self, method: str, timeout: float) -> Connection:
        if self._connection is not None and self.runstate is Runstate.RUNNING:
            return self._connection
        if self.runstate is Runstate.CONNECTING and self._reconnecting is not None:
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except TimeoutError:
                raise OvsdbConnectionError(f"{self.address}: not connected within "
                                           f"{timeout:g} s for {method} (last error: "
                                           f"{self._last_loss})") from None
            if self._connection is not None:
                return self._connection
        reason = f" ({self._last_loss})" if self._last_loss is not None else ""
        raise OvsdbConnectionError(f"{self.address}: not connected{reason}")

    async def transact(self, *operations: Operation, timeout: float | None = None
                       ) -> list[Result]:
        """Run ``operations`` as one transaction; one result dict per operation."""
        if not operations:
            raise ValueError("a transaction needs at least one operation")
        try:
            reply = await self._call("transact", self._transact_params(operations), timeout)
        except OvsdbConnectionError as error:
            if "lost while waiting" in str(error):
                raise OvsdbConnectionError(f"{error}; the transaction may or may not have "
                                           "been committed") from None
            raise
        return self._results(self.remote or self.address, operations, reply)

    def _transact_params(self, operations: Sequence[Operation]) -> list[Any]:
        return [self.database, *(operation.to_json() for operation in operations)]

    def _results(self, remote: str, operations: Sequence[Operation], reply: object
                 ) -> list[Result]:
        if isinstance(reply, BaseException):
            raise reply
        try:
            return transaction_results(remote, operations, reply, self.schema)
        except ValueShapeError as error:
            raise OvsdbProtocolError(remote, f"transact answer: {error}") from None

    async def select(self, table: str, where: Sequence[Condition] = (),
                     columns: Sequence[str] | None = None,
                     timeout: float | None = None) -> list[DecodedRow]:
        """The rows of one ``select``."""
        result = await self.transact(Select(table, where, columns), timeout=timeout)
        rows: list[DecodedRow] = result[0]["rows"]
        return rows

    # -- monitors ---------------------------------------------------------------

    def monitor(self, tables: Mapping[str, Iterable[str]],
                where: Mapping[str, Sequence[Condition]] | None = None) -> Monitor:
        """An async iterator of the updates of these tables' columns (see monitor.py);
        with ``where``, only of the rows matching each table's conditions (monitor_cond)."""
        return Monitor(f"m{next(self._monitor_ids)}",
                       {table: tuple(columns) for table, columns in tables.items()},
                       self._start_monitor, self._stop_monitor, where)

    async def _start_monitor(self, monitor: Monitor) -> None:
        self._monitors[monitor.monitor_id] = monitor
        try:
            await self._call(monitor.method, monitor.request(self.database), None,
                             on_result=self._initial_hook(monitor))
        except BaseException:
            self._monitors.pop(monitor.monitor_id, None)
            raise

    def _initial_hook(self, monitor: Monitor) -> ResultHook:
        return lambda result: monitor.initial(self.schema, result)

    async def _stop_monitor(self, monitor: Monitor) -> None:
        if self._monitors.pop(monitor.monitor_id, None) is None:
            return
        if self._connection is not None:
            with contextlib.suppress(OvsdbError):
                await self._connection.call("monitor_cancel", [monitor.monitor_id],
                                            self.timeout)

    async def _resume_monitors(self, connection: Connection) -> None:
        for monitor in list(self._monitors.values()):
            try:
                await connection.call(monitor.method, monitor.request(self.database),
                                      self.timeout,
                                      on_result=self._initial_hook(monitor))
            except OvsdbRequestError as error:
                self._monitors.pop(monitor.monitor_id, None)
                monitor.end(error)

    def _notify(self, method: str, params: Any) -> None:
        if method not in ("update", "update2"):
            _log.debug("notification %s ignored", method)
            return
        if not isinstance(params, list) or len(params) != 2:
            raise ValueShapeError("update params are not [monitor-id, table-updates]")
        monitor = self._monitors.get(params[0]) if isinstance(params[0], str) else None
        if monitor is not None:
            monitor.update(self.schema, params[1])


async def connect(remotes: str | Sequence[Remote], database: str = DEFAULT_DATABASE, *,
                  timeout: float = DEFAULT_TIMEOUT,
                  required_columns: RequiredColumns | None = None,
                  reconnect: bool = True, retry_for: float = 0.0,
                  **options: Any) -> OvsdbClient:
    """A connected :class:`OvsdbClient` (see its parameters and :meth:`OvsdbClient.connect`)."""
    client = OvsdbClient(remotes, database, timeout=timeout, required_columns=required_columns,
                         reconnect=reconnect, **options)
    await client.connect(retry_for=retry_for)
    return client


def known_schema_checks(required_columns: RequiredColumns) -> tuple[Select, ...]:
    """The selects that make the server refuse what the known schema assumes and it
    lacks: one per required table, naming exactly its required columns, matching no row."""
    return tuple(Select(table, (("_uuid", "==", NO_ROW),), tuple(columns))
                 for table, columns in required_columns.items())


async def read_once(remotes: str | Sequence[Remote], read: Sequence[Select], *,
                    known_schema: DatabaseSchema, required_columns: RequiredColumns,
                    database: str = DEFAULT_DATABASE, timeout: float = DEFAULT_TIMEOUT,
                    max_message_bytes: int = MAX_MESSAGE_BYTES,
                    max_depth: int = MAX_DEPTH) -> list[Result]:
    """One transaction of selects on a fresh connection, closed at once: a one-shot read.

    What :meth:`OvsdbClient.connect` with ``known_schema`` and ``read`` does,
    then :meth:`OvsdbClient.close`, without the client's state machine,
    monitors and reconnection (a fleet query makes hundreds of these, and that
    machinery was a third of its time): the members are tried in turn, the
    same checks travel in the same transaction, and the errors are the same.
    A database the checks do not fit is handed to a full client, whose
    ``get_schema`` names what is missing.
    """
    if not all(isinstance(operation, Select) for operation in read):
        raise ValueError("read_once needs selects")
    return await transact_once(remotes, read, known_schema=known_schema,
                               required_columns=required_columns, database=database,
                               timeout=timeout, max_message_bytes=max_message_bytes,
                               max_depth=max_depth)


async def transact_once(remotes: str | Sequence[Remote], operations: Sequence[Operation], *,
                        known_schema: DatabaseSchema, required_columns: RequiredColumns,
                        database: str = DEFAULT_DATABASE, timeout: float = DEFAULT_TIMEOUT,
                        max_message_bytes: int = MAX_MESSAGE_BYTES,
                        max_depth: int = MAX_DEPTH) -> list[Result]:
    """One transaction of any operations on a fresh connection, closed at once.

    :func:`read_once` for writes too (a conditional write whose ``wait``
    carries what was read earlier needs no read of its own): the known-schema
    checks come first in the same transaction, so a database they do not fit
    aborts it before any operation of ours applies. A transaction that is
    only selects goes to the next member when one fails at any point. One
    that writes goes to the next member only when it was never sent: once
    sent, its outcome is unknown, and sending it again could commit it twice
    (a failure there is raised as it is). A failed ``wait`` is an
    :class:`OvsdbConflictError`, as from :meth:`OvsdbClient.transact`.
    """
    results, _held = await _transact_first(
        remotes, operations, known_schema=known_schema, required_columns=required_columns,
        database=database, timeout=timeout, max_message_bytes=max_message_bytes,
        max_depth=max_depth, hold=False)
    return results


async def transact_held(remotes: str | Sequence[Remote], operations: Sequence[Operation], *,
                        known_schema: DatabaseSchema, required_columns: RequiredColumns,
                        database: str = DEFAULT_DATABASE, timeout: float = DEFAULT_TIMEOUT,
                        max_message_bytes: int = MAX_MESSAGE_BYTES,
                        max_depth: int = MAX_DEPTH,
                        ) -> tuple[list[Result], HeldConnection | None]:
    """:func:`transact_once`, with the member's connection kept open for more
    transactions (a read now, its conditional write later): the caller closes it.

    None instead of a connection when the transaction went through a full
    client (a database the known-schema checks did not fit).
    """
    return await _transact_first(
        remotes, operations, known_schema=known_schema, required_columns=required_columns,
        database=database, timeout=timeout, max_message_bytes=max_message_bytes,
        max_depth=max_depth, hold=True)


class HeldConnection:
    """A member's connection after :func:`transact_held`, for more transactions there.

    The known-schema checks travelled with the first transaction on this
    connection, so later ones carry only their own operations. No member walk,
    no reconnection: a transaction sent here that fails is raised as it is
    (once sent, its outcome is unknown); :attr:`usable` says beforehand
    whether the connection is still up.
    """

    def __init__(self, remote: str, connection: Connection, schema: DatabaseSchema,
                 database: str, timeout: float) -> None:
        self.remote = remote
        self._connection = connection
        self._schema = schema
        self._database = database
        self._timeout = timeout

    @property
    def usable(self) -> bool:
        return self._connection.lost is None

    async def transact(self, operations: Sequence[Operation]) -> list[Result]:
        params = [self._database, *(operation.to_json() for operation in operations)]
        [reply] = await self._connection.call_many([Request("transact", params)],
                                                   self._timeout)
        try:
            return transaction_results(self.remote, operations, reply, self._schema)
        except ValueShapeError as error:
            raise OvsdbProtocolError(self.remote, f"transact answer: {error}") from None

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()


async def _transact_first(remotes: str | Sequence[Remote], operations: Sequence[Operation], *,
                          known_schema: DatabaseSchema, required_columns: RequiredColumns,
                          database: str, timeout: float, max_message_bytes: int,
                          max_depth: int, hold: bool,
                          ) -> tuple[list[Result], HeldConnection | None]:
    """:func:`transact_once`, and with ``hold`` the connection it answered on."""
    members = parse_remotes(remotes) if isinstance(remotes, str) else tuple(remotes)
    if not members or not operations:
        raise ValueError("transact_once needs remotes and operations")
    resend = all(isinstance(operation, Select) for operation in operations)
    checks = known_schema_checks(required_columns)
    sent = (*checks, *operations)
    params, encoded = _read_params(database, sent)
    causes: list[tuple[str, BaseException]] = []
    for remote in members:
        address = str(remote)
        try:
            async with asyncio.timeout(timeout):
                connection = await Connection.open(
                    remote, on_notify=_ignore_notification, on_lost=_ignore_loss,
                    max_message_bytes=max_message_bytes, max_depth=max_depth)
        except (OvsdbConnectionError, OvsdbTimeoutError, OvsdbProtocolError, OSError,
                TimeoutError) as error:
            causes.append((address, error))
            continue
        held: HeldConnection | None = None
        try:
            [reply] = await connection.call_many(
                [Request("transact", params, encoded_params=encoded)], timeout)
            if hold and _refusal(reply, len(checks)) is None:
                held = HeldConnection(address, connection, known_schema, database, timeout)
        except OvsdbRequestError:  # an unknown database: the full client names it
            reply = None
        except (OvsdbConnectionError, OvsdbTimeoutError, OvsdbProtocolError, OSError,
                TimeoutError) as error:
            if not resend:
                raise
            causes.append((address, error))
            continue
        finally:
            if held is None:
                await connection.close()
        if _refusal(reply, len(checks)) is not None:
            return await _transact_with_schema(remote, operations, database=database,
                                               timeout=timeout,
                                               required_columns=required_columns,
                                               known_schema=known_schema), None
        try:
            results = transaction_results(address, sent, reply, known_schema)
        except BaseException as error:
            if held is not None:  # a conflict, an error: nothing more to send there
                await held.close()
            if not isinstance(error, ValueShapeError):
                raise
            # As connect() does: this member is unusable.
            if not resend:
                raise OvsdbProtocolError(address, f"transact answer: {error}") from None
            causes.append((address, OvsdbProtocolError(address, f"transact answer: {error}")))
            continue
        return results[len(checks):], held
    raise OvsdbConnectionError("cannot connect to OVSDB", causes)


async def _transact_with_schema(remote: Remote, operations: Sequence[Operation], *,
                                database: str, timeout: float,
                                required_columns: RequiredColumns,
                                known_schema: DatabaseSchema) -> list[Result]:
    """What a refused one-shot transaction becomes: a full client names what the server
    lacks (or, should it now accept the checks, carries the transaction)."""
    client = OvsdbClient((remote,), database, timeout=timeout,
                         required_columns=required_columns, known_schema=known_schema,
                         reconnect=False)
    try:
        selects = [operation for operation in operations if isinstance(operation, Select)]
        if len(selects) == len(operations):
            return await client.connect(read=selects)
        await client.connect()
        return await client.transact(*operations)
    finally:
        await client.close()


# A fleet query sends the same read to every host: its JSON is built once.
_READ_PARAMS: dict[tuple[str, tuple[Operation, ...]], tuple[list[Any], bytes]] = {}
READ_PARAMS_CACHED = 64


def _read_params(database: str, operations: tuple[Operation, ...]
                 ) -> tuple[list[Any], bytes]:
    """The transact params of ``operations`` and their JSON (shared between calls: not
    to be changed; a write's operations hold dicts, which are not hashable, and are
    encoded each time)."""
    try:
        known = _READ_PARAMS.get((database, operations))
        cacheable = True
    except TypeError:  # operations holding lists or dicts: not cached
        known, cacheable = None, False
    if known is None:
        params = [database, *(operation.to_json() for operation in operations)]
        known = (params, encode_json(params))
        if cacheable:
            if len(_READ_PARAMS) >= READ_PARAMS_CACHED:
                _READ_PARAMS.clear()
            _READ_PARAMS[database, operations] = known
    return known


def _ignore_notification(method: str, params: Any) -> None:
    """A one-shot read asks for no updates; a server's unsolicited notification is dropped."""


def _ignore_loss(connection: Connection, reason: OvsdbError) -> None:
    """A one-shot read learns of a loss from its call's error."""


def transaction_results(remote: str, operations: Sequence[Operation], reply: object,
                        schema: DatabaseSchema) -> list[Result]:
    """Per-operation results, or the first error (an operation's, or the commit's)."""
    count = len(operations)
    if not isinstance(reply, list) or len(reply) not in (count, count + 1):
        raise ValueShapeError(f"expected {count} results, got {_length(reply)}")
    for index, element in enumerate(reply):
        if isinstance(element, dict) and "error" in element:
            raise _commit_error(remote, operations, index, element)
    if len(reply) > count:
        raise ValueShapeError("an extra result element that is not an error")
    return [decode_result(operation, element, schema)
            for operation, element in zip(operations, reply, strict=True)]


def _commit_error(remote: str, operations: Sequence[Operation], index: int,
                  element: dict[str, Any]) -> OvsdbCommitError:
    error = str(element.get("error"))[:200]
    details = element.get("details")
    detail_text = None if details is None else str(details)[:200]
    if index >= len(operations):
        return OvsdbCommitError(remote, error, detail_text, None, None)
    operation = operations[index]
    kind = OvsdbConflictError if isinstance(operation, Wait) and error == WAIT_FAILED else (
        OvsdbCommitError)
    return kind(remote, error, detail_text, index, operation.op)


def _refusal(reply: object, checks: int) -> str | None:
    """Why the server refused the known-schema checks (None: it did not): no reply
    (an unknown database) or an error element among the checks' results."""
    if reply is None:
        return "unknown database"
    if not isinstance(reply, list):
        return None  # malformed: the results' decoding says so
    for element in reply[:checks]:
        if isinstance(element, dict) and "error" in element:
            return f"{str(element.get('error'))[:60]}: {str(element.get('details'))[:200]}"
    return None


def _length(reply: object) -> str:
    return str(len(reply)) if isinstance(reply, list) else type(reply).__name__


# get_schema answers repeat byte for byte between servers of one version and
# arrive as the same parsed object (jsonrpc's cache): parse each one once.
_SCHEMAS: list[tuple[object, DatabaseSchema]] = []


def _schema_of(answer: object) -> DatabaseSchema:
    for known, schema in _SCHEMAS:
        if known is answer:
            return schema
    schema = DatabaseSchema(answer)
    _SCHEMAS.append((answer, schema))
    del _SCHEMAS[:-4]
    return schema
