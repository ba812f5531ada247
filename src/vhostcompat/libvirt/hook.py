"""The libvirt qemu hook: refuse a domain this host cannot run, assign the interfaces' modes.

libvirtd runs every executable in ``/etc/libvirt/hooks/qemu.d/`` (found at
daemon start) as ``HOOK DOMAIN OPERATION SUB-OPERATION EXTRA`` with the full
domain XML on stdin; a non-zero exit refuses the operation, and libvirt shows
the hook's stderr to the user ("Hook script execution failed: internal error:
Child process (...) unexpected exit status 1: <our line>").
:func:`install_hook` writes our script there: one ``exec`` of
``vhostcompat libvirt-hook --db HOST "$@"``.

What the hook does per call (:class:`HookCall`):

* ``prepare begin`` (every start, restore, and an incoming migration) and
  ``migrate begin`` (the destination of a migration, before anything else):
  :func:`admit_domain` reads our ``<metadata>`` (:mod:`.metadata`); a domain
  without it passes untouched. For each entry it finds the vhost-user
  interface with that MAC and the store interface name (the entry's ``iface``,
  else the socket path's last component), checks that this host can run the
  version (:func:`vhostcompat.profiles.check_destination`: the version
  published, or a published profile that satisfies it by content; and what the
  guest negotiated, when the entry carries it), and only when every interface
  passes writes each one's mode (the version, or the matching profile's) into
  the host store. Nothing is printed on stdout (for ``migrate begin`` that
  would replace the domain XML).
* every other operation libvirt sends: exit 0 at once, stdin unread.

Exit statuses: 0 admitted (or nothing to do); 1 refused, this host cannot run
an interface (one line naming interface, version and why), a version
nobody here knows included; 2 bad input: arguments libvirt never sends (or
the XML of another domain than the one named), malformed domain XML or
metadata, an unreadable host store. Every non-zero status makes libvirt refuse the
operation: when in doubt, the domain does not run here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.hoststore import (
    NO_MODE,
    EmbeddedHostStore,
    HostRecord,
    HostStore,
    ModeState,
    ModeWrite,
    open_host,
)
from vhostcompat.libvirt.calls import (
    DEFAULT_HOOKS_DIR,
    HOOK_SCRIPT_NAME,
    HookUsageError,
)
from vhostcompat.libvirt.domain import (
    VhostUserInterface,
    domain_name,
    parse_domain_xml,
    vhostuser_interfaces,
)
from vhostcompat.libvirt.metadata import DomainMetadata, InterfaceMetadata, metadata_from_domain
from vhostcompat.manager import required_profile
from vhostcompat.profiles import Catalog, DestinationCheck, check_destination

CatalogLoader = Callable[[], Catalog]


class HookRefusal(VhostCompatError):
    """This host cannot run an interface of the domain: libvirt refuses it (exit 1)."""

    exit_status = 1


@dataclass(frozen=True)
class Admission:
    """One interface admitted: its store name and the mode written there."""

    entry: InterfaceMetadata
    iface: str
    check: DestinationCheck

    @property
    def mode(self) -> str:
        mode = self.check.destination_version
        assert mode is not None  # a compatible check names the mode
        return mode


@dataclass(frozen=True)
class HookDecision:
    """What the hook decided for a domain: nothing to do (no metadata) or admissions."""

    domain: str
    admissions: tuple[Admission, ...]
    written: tuple[str, ...] = ()


def store_names(name: str, metadata: DomainMetadata,
                nics: Mapping[str, VhostUserInterface]) -> list[tuple[InterfaceMetadata, str]]:
    """Each entry with its store interface name: ``iface``, else the socket's last component."""
    named: list[tuple[InterfaceMetadata, str]] = []
    for entry in metadata.interfaces:
        nic = nics.get(entry.mac)
        if nic is None:
            raise InputError(f"domain {name}: the vhostcompat metadata names {entry.mac}, "
                             "which is no vhost-user interface of the domain")
        iface = entry.iface or nic.socket_name
        if iface is None:
            raise InputError(f"domain {name}: interface {entry.mac} has no socket path to "
                             "name it by; give the metadata entry an iface attribute")
        named.append((entry, iface))
    names = [iface for _, iface in named]
    for iface in names:
        if names.count(iface) > 1:
            raise InputError(f"domain {name}: two interfaces map to store interface {iface}")
    return named


def judge(name: str, record: HostRecord, named: Sequence[tuple[InterfaceMetadata, str]],
          catalog: CatalogLoader | None) -> tuple[Admission, ...]:
    """Every interface checked against this host; :class:`HookRefusal` names each refusal."""
    admissions: list[Admission] = []
    refusals: list[str] = []
    for entry, iface in named:
        required = required_profile(entry.version, record, None)
        if required is None and catalog is not None:
            required = catalog().find(entry.version)
        check = check_destination(entry.version, required, record.versions,
                                  record.profiles, entry.negotiated)
        if check.compatible:
            admissions.append(Admission(entry, iface, check))
        else:
            refusals.append(f"interface {entry.mac} ({iface}) in {entry.version}: "
                            + "; ".join(check.reasons))
    if refusals:
        raise HookRefusal(f"domain {name} cannot run on host {record.address}: "
                          + " | ".join(refusals))
    return tuple(admissions)


async def _write_modes(store: HostStore, record: HostRecord,
                       admissions: Sequence[Admission]) -> tuple[str, ...]:
    """Write every mode that differs, each conditional on what was read; on a failure,
    undo the ones already written, newest first (each undo conditional on what it
    wrote, as ``provision``'s are): an interface that had no mode has none again."""
    done: list[ModeWrite] = []
    try:
        for admission in admissions:
            current = record.interfaces.get(admission.iface)
            before = current.mode_state if current is not None else NO_MODE
            if before.mode == admission.mode:
                continue
            write = ModeWrite(admission.iface, before, ModeState(admission.mode))
            await store.write_mode(write)
            done.append(write)
    except VhostCompatError:
        for write in reversed(done):
            with contextlib.suppress(VhostCompatError):
                await store.write_mode(write.inverse(None, None))
        raise
    return tuple(write.interface for write in done)


async def admit_domain(xml: bytes, address: str, catalog: CatalogLoader | None = None,
                       expected_name: str | None = None) -> HookDecision:
    """Check a domain against this host's store and assign its interfaces' modes.

    ``expected_name``: the domain libvirt named in the hook's arguments; the
    XML must describe that one. Raises :class:`HookRefusal` (nothing
    written) when an interface cannot run here, :class:`InputError` /
    :class:`HostError` for bad input.
    """
    domain = parse_domain_xml(xml)
    name = domain_name(domain)
    if expected_name is not None and name != expected_name:
        raise HookUsageError(f"the hook was called for domain {expected_name!r} with the XML "
                             f"of domain {name!r}")
    metadata = metadata_from_domain(domain)
    if metadata is None:
        return HookDecision(name, ())
    named = store_names(name, metadata, vhostuser_interfaces(domain))
    async with open_host(address) as store:
        record = await store.read()
        admissions = judge(name, record, named, catalog)
        written = await _write_modes(store, record, admissions)
    return HookDecision(name, admissions, written)


# --- installing the hook ---------------------------------------------------------

def hook_script(address: str, catalogs: Sequence[str] = (),
                python: str = sys.executable) -> str:
    """The hook script: ``exec`` of ``vhostcompat libvirt-hook`` with libvirt's arguments.

    Absolute paths only: libvirt gives hooks no PATH of ours.
    """
    options = ["--db", address]
    for catalog in catalogs:
        options += ["--catalog", catalog]
    command = [python, "-m", "vhostcompat.cli", "libvirt-hook", *options]
    return "#!/bin/sh\nexec " + " ".join(shlex.quote(part) for part in command) + ' -- "$@"\n'


def install_hook(address: str, hooks_dir: Path = DEFAULT_HOOKS_DIR,
                 catalogs: Sequence[str] = (), python: str = sys.executable) -> Path:
    """Write the hook script into ``hooks_dir`` atomically (mode 0755); its path.

    libvirtd discovers hooks when it starts: restart it afterwards.
    """
    store = open_host(address)  # refuses an address no store can have
    catalogs = [os.path.abspath(catalog) for catalog in catalogs]
    if isinstance(store, EmbeddedHostStore):
        # libvirtd runs hooks from / : a relative directory would name another store.
        address = os.path.abspath(address)
    try:
        hooks_dir.mkdir(parents=True, exist_ok=True)
        target = hooks_dir / HOOK_SCRIPT_NAME
        fd, temporary = tempfile.mkstemp(dir=hooks_dir, prefix=f".{HOOK_SCRIPT_NAME}.")
        try:
            with os.fdopen(fd, "w") as script:
                script.write(hook_script(address, catalogs, python))
                script.flush()
                os.fsync(script.fileno())
            os.chmod(temporary, 0o755)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        raise InputError(f"cannot install the hook in {hooks_dir}: "
                         f"{error.strerror or error}") from None
    return target
