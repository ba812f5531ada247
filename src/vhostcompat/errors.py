"""One error hierarchy for the whole package.

::

    VhostCompatError                 root: everything we raise on purpose
     +-- InputError                  bad input from a user or a file (CLI exit 2)
     |    +-- FeatureNameError       a feature name or mask we do not know
     |    +-- CatalogError           a catalog file that cannot be loaded
     |    +-- UnknownVersionError    a version string no catalog defines
     +-- HostError                   a host's store is missing, unreachable or corrupt (exit 2)
     +-- ProtocolError               vhost-user protocol errors
          +-- LocalProtocolError     we misused the protocol
          +-- RemoteProtocolError    the peer sent something we refuse

Every error formats itself into one line: the CLI prints ``str(error)`` and
never a traceback.
"""

from __future__ import annotations


class VhostCompatError(Exception):
    """Root of every error this package raises on purpose."""

    exit_status = 2


class InputError(VhostCompatError):
    """Bad input from a user, a command line or a file."""


class FeatureNameError(InputError):
    """A feature name, alias or mask that does not parse."""


class CatalogError(InputError):
    """A catalog that cannot be loaded; names the file, profile and key."""

    def __init__(self, path: str, message: str, profile: str | None = None,
                 key: str | None = None) -> None:
        self.path = path
        self.profile = profile
        self.key = key
        self.message = message
        where = [path]
        if profile is not None:
            where.append(f"profile {profile!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{': '.join(where)}: {message}")


class UnknownVersionError(InputError):
    """A compatibility version string that no loaded catalog defines."""


class HostError(VhostCompatError):
    """A host store that is missing, unreachable or corrupt."""


class ProtocolError(VhostCompatError):
    """A vhost-user protocol error."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol or the session state forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse; the session is latched broken."""
