"""Errors of the fleet inventory.

::

    HostError                       (vhostcompat.errors; CLI exit 2)
     +-- FleetError                 root of what the fleet layer raises
          +-- FleetUnavailableError no member of the fleet cluster is reachable, connected
          |                         to the cluster and leading (below quorum, an election
          |                         that did not end in time): every member's state named
          +-- FleetSchemaError      the fleet database is another schema (version) than ours
          +-- FleetOwnerError       another agent owns this host name (a fresh heartbeat)
          +-- FleetUnknownHostError a host name the fleet does not know
          +-- FleetStaleHostError   a host whose heartbeat is older than the threshold
          +-- FleetOutcomeError     a write whose outcome could not be established
    InputError                      (exit 2)
     +-- FleetInputError            a malformed registration (host name, version list)

Every error formats itself in one line.
"""

from __future__ import annotations

from vhostcompat.errors import HostError, InputError


class FleetError(HostError):
    """Root of the fleet layer's errors."""


class FleetUnavailableError(FleetError):
    """No member can answer with current data (unreachable, below quorum, no leader)."""

    def __init__(self, address: str, states: list[tuple[str, str]]) -> None:
        self.address = address
        self.states = tuple(states)
        detail = "; ".join(f"{member}: {state}" for member, state in states) or "no member"
        super().__init__(f"fleet {address}: no member is connected to the cluster and "
                         f"leading ({detail})")


class FleetSchemaError(FleetError):
    """The fleet database's schema is not the one this client speaks."""


class FleetOwnerError(FleetError):
    """The host name is registered by another agent whose heartbeat is fresh."""


class FleetUnknownHostError(FleetError):
    """Host names that no row of the fleet database holds."""


class FleetStaleHostError(FleetError):
    """A host whose heartbeat is stale: never treated as compatible."""

    def __init__(self, name: str, age: float, stale_after: float) -> None:
        self.name = name
        self.age = age
        self.stale_after = stale_after
        super().__init__(f"host {name}: heartbeat {age:.1f} s old (stale after "
                         f"{stale_after:g} s): not treated as compatible")


class FleetOutcomeError(FleetError):
    """A write was cut off and its outcome could not be read back in time."""


class FleetInputError(InputError):
    """A registration refused before anything is written (host name, version list)."""
