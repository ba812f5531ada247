"""Errors of the OVSDB client.

::

    HostError                         (vhostcompat.errors; CLI exit 2)
     +-- OvsdbError                   root of everything the OVSDB client raises
          +-- OvsdbRemoteError        a remote string that does not parse
          +-- OvsdbConnectionError    no member of a remote list answered, the
          |                           connection dropped under a call, or the
          |                           client is closed; carries the cause(s)
          +-- OvsdbTimeoutError       a call got no reply within its timeout
          +-- OvsdbProtocolError      the server sent something we refuse
          |                           (malformed or oversized JSON, nesting too
          |                           deep, a value of the wrong shape)
          +-- OvsdbRequestError       the server answered a call with an error
          |    +-- OvsdbCommitError   a transaction failed (an op, or the commit)
          |         +-- OvsdbConflictError  a ``wait`` op failed: the rows read
          |                                 changed meanwhile; nothing was written
          +-- OvsdbSchemaError        the database is not the one we need, or lacks
                                      a table or column we use (named)

Every error formats itself in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vhostcompat.errors import HostError


class OvsdbError(HostError):
    """Root of the OVSDB client's errors."""


class OvsdbRemoteError(OvsdbError):
    """A malformed remote string (``unix:PATH``, ``tcp:IP:PORT``, comma separated)."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"malformed OVSDB remote {text!r}: {reason}")


class OvsdbConnectionError(OvsdbError):
    """Connecting failed (every member tried), or the connection went away.

    ``causes`` pairs each remote tried with what went wrong there.
    """

    def __init__(self, message: str, causes: Sequence[tuple[str, BaseException]] = ()) -> None:
        self.causes = tuple(causes)
        if self.causes:
            message += ": " + "; ".join(f"{remote}: {describe(cause)}"
                                        for remote, cause in self.causes)
        super().__init__(message)


class OvsdbTimeoutError(OvsdbError):
    """A call got no reply in time (a server that accepts and never answers)."""

    def __init__(self, remote: str, method: str, timeout: float) -> None:
        self.remote = remote
        self.method = method
        self.timeout = timeout
        super().__init__(f"{remote}: no reply to {method} within {timeout:g} s")


class OvsdbProtocolError(OvsdbError):
    """The server sent something we refuse; the connection is closed."""

    def __init__(self, remote: str, reason: str) -> None:
        self.remote = remote
        self.reason = reason
        super().__init__(f"{remote}: {reason}")


class OvsdbRequestError(OvsdbError):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, remote: str, method: str, error: str, details: str | None = None) -> None:
        self.remote = remote
        self.method = method
        self.error = error
        self.details = details
        text = f"{remote}: {method} failed: {error}"
        if details:
            text += f" ({details})"
        super().__init__(text)


class OvsdbCommitError(OvsdbRequestError):
    """A transaction failed: an operation (``index``, 0-based) or the commit itself.

    ``index`` is None for a commit error (the extra result element after the
    last operation's); nothing of the transaction was written either way.
    """

    def __init__(self, remote: str, error: str, details: str | None,
                 index: int | None, operation: str | None) -> None:
        self.index = index
        self.operation = operation
        where = "commit" if index is None else f"operation {index + 1} ({operation})"
        super().__init__(remote, f"transact, {where}", error, details)


class OvsdbConflictError(OvsdbCommitError):
    """A ``wait`` op failed: what we read changed meanwhile; nothing was written."""


class OvsdbSchemaError(OvsdbError):
    """The database is not the one we need, or lacks a table or column we use."""

    def __init__(self, remote: str, reason: str) -> None:
        self.remote = remote
        self.reason = reason
        super().__init__(f"{remote}: {reason}")


def describe(cause: BaseException) -> str:
    """One line for a cause: an OSError's strerror, else the error's own text."""
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    if isinstance(cause, TimeoutError):
        return "timed out"
    return str(cause) or type(cause).__name__
