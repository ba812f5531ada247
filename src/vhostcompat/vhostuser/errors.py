"""Errors of the vhost-user core, all under :mod:`vhostcompat.errors`.

::

    ProtocolError
     +-- LocalProtocolError
     |    +-- PayloadError         a payload value that cannot be represented
     |    +-- LocalMessageError    we tried to send something the session forbids
     +-- RemoteProtocolError
          +-- RemoteMessageError   the peer sent something we refuse

Message errors carry the request, the ring index when one is involved and the
reason, and format themselves into one line such as
``SET_VRING_NUM (ring 3): ring size 1000 is not a power of two``.
"""

from __future__ import annotations

import enum

from vhostcompat.errors import LocalProtocolError, RemoteProtocolError


class PayloadError(LocalProtocolError):
    """A payload field out of range, or bytes that do not form the payload.

    Raised by payload constructors (our own misuse) and by ``unpack``; the
    decoder turns it into a :class:`RemoteMessageError` naming the request.
    """


class _MessageErrorFields(Exception):
    """What both message errors carry (request, ring, reason) and their one-line form."""

    def __init__(self, reason: str, *, request: enum.IntEnum | int | None = None,
                 ring: int | None = None) -> None:
        self.reason = reason
        self.request = request
        self.ring = ring
        super().__init__(self._describe())

    def _describe(self) -> str:
        request, ring = self.request, self.ring
        if request is None:
            where = ""
        elif isinstance(request, enum.IntEnum):
            where = request.name
        else:
            where = f"request {request}"
        if ring is not None:
            where = f"{where} (ring {ring})" if where else f"ring {ring}"
        return f"{where}: {self.reason}" if where else self.reason


class RemoteMessageError(_MessageErrorFields, RemoteProtocolError):
    """The peer sent a message we refuse (codec or session rule)."""


class LocalMessageError(_MessageErrorFields, LocalProtocolError):
    """We tried to send a message the protocol or the session state forbids."""
