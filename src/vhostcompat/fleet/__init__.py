"""The fleet inventory: hosts register into one Raft-clustered OVSDB, managers ask it once.

OVN's southbound database is the model: every chassis publishes its
capabilities there, and often-changing per-chassis data lives in a table
apart from the rows every client reads. Here:

* :mod:`~.schema`: ``fleet.ovsschema`` (``Host``, content-addressed
  ``Profile``, per-interface ``Interface`` records), its version check;
* :mod:`~.cluster`: the Raft cluster's layout (``vhostcompat fleet init``);
* :mod:`~.session`: a client of the member that is connected and leading,
  reconnecting to the new leader under an idempotent operation;
* :mod:`~.registry`: :func:`register` (``publish --fleet`` and the agent
  share it), :func:`heartbeat`;
* :mod:`~.records`: what managers read (host records by fleet name, the
  stale rule);
* :mod:`~.provision`: modes written in the ``Interface`` records, all hosts
  in one transaction, idempotent;
* :mod:`~.presence`: the agent's side (register, heartbeat, republish after
  a reconnect, apply provisioned modes to its host's database).
"""

from vhostcompat.fleet.errors import (
    FleetError,
    FleetInputError,
    FleetOutcomeError,
    FleetOwnerError,
    FleetSchemaError,
    FleetUnavailableError,
    FleetUnknownHostError,
)
from vhostcompat.fleet.registry import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_STALE_AFTER,
    Registration,
    heartbeat,
    profile_digest,
    register,
)
from vhostcompat.fleet.schema import FLEET_DATABASE, SCHEMA_VERSION, schema_path, schema_text
from vhostcompat.fleet.session import FleetSession, connect_fleet

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_STALE_AFTER",
    "FLEET_DATABASE",
    "SCHEMA_VERSION",
    "FleetError",
    "FleetInputError",
    "FleetOutcomeError",
    "FleetOwnerError",
    "FleetSchemaError",
    "FleetSession",
    "FleetUnavailableError",
    "FleetUnknownHostError",
    "Registration",
    "connect_fleet",
    "heartbeat",
    "profile_digest",
    "register",
    "schema_path",
    "schema_text",
]
