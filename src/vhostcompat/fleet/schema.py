"""The fleet database's schema, shipped with the package (``fleet.ovsschema``).

Tables (``vhostcompat fleet schema`` prints the file):

* ``Host`` (root, unique ``name``): a host's fleet name, its own OVSDB
  remote, the versions it publishes (``versions``: rank -> version, 0 the
  most preferred), strong references to its ``Profile`` rows, a
  ``heartbeat`` (milliseconds since the epoch, the agent's clock) and the
  ``owner`` (the registering agent's instance id). Every manager reads these.
* ``Profile`` (not root, unique ``digest``): content-addressed, the key is
  the SHA-256 of the profile's canonical JSON; hosts publishing the same
  contents share one row, and a row no host references is garbage-collected
  by ovsdb-server.
* ``Interface`` (root, unique ``(host, name)``): per-interface records
  (the mode provisioned, the provisioning id that wrote it, the negotiated
  state the agent saw). Kept apart from
  ``Host``: managers never monitor it, and each agent monitors only its
  own host's rows (``monitor_cond`` with a ``where``).

The schema is versioned (``"version"``); a later one converts a database
with ``ovsdb-client convert`` (a live cluster too). The client refuses a
fleet database of another name or major version, or of an older minor one.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from vhostcompat.fleet.errors import FleetSchemaError

FLEET_DATABASE = "VhostCompat_Fleet"
HOST_TABLE = "Host"
PROFILE_TABLE = "Profile"
INTERFACE_TABLE = "Interface"
HOST_COLUMNS = ("name", "remote", "versions", "profiles", "heartbeat", "owner")
PROFILE_COLUMNS = ("digest", "version", "contents")
INTERFACE_COLUMNS = ("host", "name", "mode", "provision", "negotiated")
REQUIRED_COLUMNS = {HOST_TABLE: HOST_COLUMNS, PROFILE_TABLE: PROFILE_COLUMNS,
                    INTERFACE_TABLE: INTERFACE_COLUMNS}


def schema_text() -> str:
    """The schema file as shipped."""
    return resources.files("vhostcompat.fleet").joinpath("fleet.ovsschema").read_text()


def schema_path() -> str:
    """A filesystem path of the shipped schema (for ovsdb-tool)."""
    return str(resources.files("vhostcompat.fleet").joinpath("fleet.ovsschema"))


def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(schema_text())
    return data


SCHEMA_VERSION: str = _schema()["version"]


def check_version(remote: str, name: str, version: str) -> None:
    """Refuse a fleet database of another schema: the name, and the major version, must
    match, and the minor be at least ours (OVSDB's convention: a minor version only adds;
    what we use is checked column by column on connect as well)."""
    if name != FLEET_DATABASE:
        raise FleetSchemaError(f"{remote}: database {name!r} is not {FLEET_DATABASE}")
    if not _compatible(version):
        raise FleetSchemaError(
            f"{remote}: fleet database schema {version or '(none)'} is not the "
            f"{SCHEMA_VERSION} this client speaks (convert it with ovsdb-client convert, "
            "or use a matching vhostcompat)")


def _compatible(version: str) -> bool:
    theirs, ours = version.split("."), SCHEMA_VERSION.split(".")
    if len(theirs) != 3 or not all(part.isascii() and part.isdigit() for part in theirs):
        return False
    return theirs[0] == ours[0] and int(theirs[1]) >= int(ours[1])
