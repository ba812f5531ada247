"""What libvirt and the hook exchange: the four arguments (checked), where the hook
lives, and the namespace of our domain ``<metadata>``.

Apart from :mod:`.hook` so that the calls the hook lets through (all but
``prepare begin`` and ``migrate begin``: libvirt runs the hook on every
start, stop and release of every domain) are answered without loading the
domain XML reader, the host stores and the profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import InputError

# Stable: a new major version of the metadata would take a new namespace.
NAMESPACE = "https://vhostcompat.example/xmlns/vhostcompat/1"

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks/qemu.d")
HOOK_SCRIPT_NAME = "vhostcompat"
HOOK_ARGUMENT_COUNT = 4

# libvirt's qemu hook calls (docs/hooks.rst): operation -> the sub-operation it comes with.
OPERATIONS: dict[str, str] = {
    "prepare": "begin", "start": "begin", "started": "begin", "stopped": "end",
    "release": "end", "migrate": "begin", "restore": "begin", "reconnect": "begin",
    "attach": "begin",
}
CHECKED_CALLS = frozenset({("prepare", "begin"), ("migrate", "begin")})


class HookUsageError(InputError):
    """The hook was called with arguments libvirt never sends (exit 2)."""


@dataclass(frozen=True)
class HookCall:
    """libvirt's four hook arguments, validated."""

    domain: str
    operation: str
    sub_operation: str
    extra: str

    @classmethod
    def parse(cls, arguments: Sequence[str]) -> HookCall:
        if len(arguments) != HOOK_ARGUMENT_COUNT:
            raise HookUsageError(f"libvirt-hook takes DOMAIN OPERATION SUB-OPERATION EXTRA "
                                 f"(4 arguments), got {len(arguments)}")
        domain, operation, sub_operation, extra = arguments
        if not domain:
            raise HookUsageError("empty domain name")
        expected = OPERATIONS.get(operation)
        if expected is None:
            raise HookUsageError(f"unknown hook operation {operation!r} (libvirt sends: "
                                 f"{', '.join(OPERATIONS)})")
        if sub_operation != expected:
            raise HookUsageError(f"operation {operation} comes with sub-operation "
                                 f"{expected!r}, not {sub_operation!r}")
        return cls(domain, operation, sub_operation, extra)

    @property
    def checks_domain(self) -> bool:
        """Whether this call reads the domain and may refuse it."""
        return (self.operation, self.sub_operation) in CHECKED_CALLS
