"""Catalogs: TOML files (or directories of them) listing profiles, newest first.

Format (see DESIGN.md)::

    [rules]                          # optional: keys this catalog adds, with their rule
    max_mtu = "at_most"

    [[profile]]                      # order is preference: newest first
    version = "upstream.ovs-dpdk.v2.7"
    description = "..."              # optional, informational
    virtio_features = ["VIRTIO_NET_F_CSUM", "VIRTIO_RING_F_INDIRECT_DESC"]  # or "0x..."
    protocol_features = ["MQ", "LOG_SHMFD"]                                  # optional
    max_queue_pairs = 8                                                      # optional
    max_ring_size = 1024                                                     # optional
    max_mtu = 9000                                                           # declared above

A catalog is refused as a whole (nothing half-loaded) with the file, the
profile and the key named: malformed TOML, an unknown feature name, a wrong
type, a duplicate version (within or across files), an unknown key without a
declared rule, a file or directory without profiles.

The default catalog is the one shipped with the package (``catalogs/*.toml``)
followed by the system directory ``/etc/vhostcompat/catalog.d`` when it exists
(``VHOSTCOMPAT_SYSTEM_CATALOG_DIR`` overrides that path).
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vhostcompat.errors import CatalogError, InputError, UnknownVersionError
from vhostcompat.features import ProtocolFeature, VirtioFeature, names
from vhostcompat.files import FileInputError, read_text
from vhostcompat.profiles.model import (
    CompatProfile,
    KeyValueError,
    Rule,
    format_raw,
    parse_rules,
    profile_from_mapping,
)

SYSTEM_CATALOG_DIR = Path("/etc/vhostcompat/catalog.d")
SYSTEM_CATALOG_ENV = "VHOSTCOMPAT_SYSTEM_CATALOG_DIR"
TOP_LEVEL_KEYS = ("profile", "rules")


@dataclass(frozen=True)
class CatalogEntry:
    """A profile and the catalog file it was read from."""

    profile: CompatProfile
    source: str


@dataclass(frozen=True)
class Catalog:
    """Profiles in preference order (newest first), each with its source file."""

    entries: tuple[CatalogEntry, ...]

    def __iter__(self) -> Iterator[CompatProfile]:
        return (entry.profile for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, version: object) -> bool:
        return any(entry.profile.version == version for entry in self.entries)

    @property
    def profiles(self) -> tuple[CompatProfile, ...]:
        return tuple(entry.profile for entry in self.entries)

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(entry.profile.version for entry in self.entries)

    def find(self, version: str) -> CompatProfile | None:
        for entry in self.entries:
            if entry.profile.version == version:
                return entry.profile
        return None

    def entry(self, version: str) -> CatalogEntry:
        for entry in self.entries:
            if entry.profile.version == version:
                return entry
        known = ", ".join(self.versions) or "none"
        raise UnknownVersionError(f"unknown version {version!r} (the catalog defines: {known})")

    def get(self, version: str) -> CompatProfile:
        """The profile of ``version``; :class:`UnknownVersionError` if absent."""
        return self.entry(version).profile

    def only(self, versions: Sequence[str]) -> Catalog:
        """The named versions, in catalog order; every name must exist."""
        wanted = set(versions)
        for version in versions:
            self.entry(version)
        return Catalog(tuple(entry for entry in self.entries
                             if entry.profile.version in wanted))


def parse_catalog_text(text: str, source: str) -> list[CatalogEntry]:
    """The profiles of one catalog file's text; :class:`CatalogError` if refused."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(source, f"malformed TOML: {error}") from error
    except ValueError as error:  # an integer beyond Python's digits limit
        raise CatalogError(source, f"unusable TOML: {error}") from error
    except RecursionError:
        raise CatalogError(source, "unusable TOML: arrays or tables nested too "
                                   "deeply") from None
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            raise CatalogError(source, "unknown top-level key (expected [[profile]] entries "
                               "and an optional [rules] table)", key=key)
    rules: dict[str, Rule] = {}
    if "rules" in document:
        try:
            rules = parse_rules(document["rules"])
        except InputError as error:
            raise CatalogError(source, str(error), key="rules") from error
    tables = document.get("profile", [])
    if not isinstance(tables, list) or not all(isinstance(item, dict) for item in tables):
        raise CatalogError(source, "'profile' must be an array of tables ([[profile]])",
                           key="profile")
    if not tables:
        raise CatalogError(source, "defines no profiles (an empty catalog)")
    entries: list[CatalogEntry] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        name = table.get("version")
        label = name if isinstance(name, str) else f"#{index}"
        try:
            profile = profile_from_mapping(table, rules)
        except KeyValueError as error:
            raise CatalogError(source, error.message, profile=label, key=error.key) from error
        except InputError as error:
            raise CatalogError(source, str(error), profile=label) from error
        if profile.version in seen:
            raise CatalogError(source, f"duplicate version (profile #{seen[profile.version]} "
                               "has it too)", profile=profile.version, key="version")
        seen[profile.version] = index
        entries.append(CatalogEntry(profile, source))
    return entries


def _read_file(path: Path) -> str:
    try:
        return read_text(path)
    except FileInputError as error:
        raise CatalogError(str(path), error.reason) from error


def _toml_files(directory: Path) -> list[Path]:
    """The ``*.toml`` regular files of a catalog directory, by name."""
    try:
        return sorted(child for child in directory.iterdir()
                      if child.suffix == ".toml" and child.is_file())
    except OSError as error:
        raise CatalogError(str(directory), f"cannot list the directory: "
                                           f"{error.strerror or error}") from error


def _catalog_files(path: Path) -> list[Path]:
    try:
        status = path.stat()
    except FileNotFoundError:
        raise CatalogError(str(path), "no such catalog file or directory") from None
    except OSError as error:
        raise CatalogError(str(path), f"cannot be examined: {error.strerror or error}") from None
    if stat.S_ISDIR(status.st_mode):
        files = _toml_files(path)
        if not files:
            raise CatalogError(str(path), "directory holds no *.toml catalog files")
        return files
    return [path]


def merge_entries(groups: Sequence[Sequence[CatalogEntry]]) -> Catalog:
    """One catalog from several files' entries, in order; versions must be unique."""
    entries: list[CatalogEntry] = []
    first_source: dict[str, str] = {}
    for group in groups:
        for entry in group:
            version = entry.profile.version
            if version in first_source:
                raise CatalogError(entry.source, f"duplicate version (already defined in "
                                   f"{first_source[version]})", profile=version, key="version")
            first_source[version] = entry.source
            entries.append(entry)
    if not entries:
        raise CatalogError("catalog", "no profiles at all (an empty catalog)")
    return Catalog(tuple(entries))


def load_catalog(paths: Sequence[str | os.PathLike[str]]) -> Catalog:
    """Load catalog files and directories, in the order given, all or nothing."""
    if not paths:
        raise CatalogError("catalog", "no catalog files given")
    groups: list[list[CatalogEntry]] = []
    for raw in paths:
        for file in _catalog_files(Path(raw)):
            groups.append(parse_catalog_text(_read_file(file), str(file)))
    return merge_entries(groups)


def shipped_catalog_entries() -> list[list[CatalogEntry]]:
    """The catalogs shipped as package data, in file name order."""
    directory = resources.files("vhostcompat").joinpath("catalogs")
    groups: list[list[CatalogEntry]] = []
    for item in sorted(directory.iterdir(), key=lambda child: child.name):
        if item.name.endswith(".toml") and item.is_file():
            source = f"<shipped>/{item.name}"
            groups.append(parse_catalog_text(item.read_text(encoding="utf-8"), source))
    return groups


def system_catalog_dir() -> Path:
    return Path(os.environ.get(SYSTEM_CATALOG_ENV) or SYSTEM_CATALOG_DIR)


def load_default_catalog() -> Catalog:
    """The shipped catalogs, then the system directory's files if it exists."""
    groups = shipped_catalog_entries()
    system = system_catalog_dir()
    try:
        is_directory = system.is_dir()
    except OSError as error:
        raise CatalogError(str(system), f"cannot be examined: "
                                        f"{error.strerror or error}") from None
    if is_directory:
        for file in _toml_files(system):
            groups.append(parse_catalog_text(_read_file(file), str(file)))
    return merge_entries(groups)


def load_catalog_or_default(paths: Sequence[str | os.PathLike[str]] | None) -> Catalog:
    """``--catalog`` semantics: given paths replace the default catalog."""
    return load_catalog(paths) if paths else load_default_catalog()


def _toml_value(value: object) -> str:
    # json.dumps of str/int/bool/list-of-str is valid TOML for those types.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return json.dumps(value)


def catalog_entry_text(profile: CompatProfile, comments: Sequence[str] = ()) -> str:
    """One profile as catalog TOML (a ``[rules]`` table for declared keys, then
    ``[[profile]]``): what ``probe --as-profile`` and ``baseline`` print, and
    what :func:`parse_catalog_text` reads back to the same profile."""
    lines = [f"# {comment}" for comment in comments]
    rules = {spec.name: spec.rule.value for spec, _value in profile.items() if not spec.builtin}
    if rules:
        lines.append("[rules]")
        lines.extend(f"{name} = {json.dumps(rule)}" for name, rule in rules.items())
        lines.append("")
    lines += ["[[profile]]", f"version = {json.dumps(profile.version)}"]
    if profile.description:
        lines.append(f"description = {json.dumps(profile.description)}")
    for spec, value in profile.items():
        if isinstance(value, VirtioFeature):
            raw: object = names(value, VirtioFeature)
        elif isinstance(value, ProtocolFeature):
            raw = names(value, ProtocolFeature)
        else:
            raw = format_raw(value)
        lines.append(f"{spec.name} = {_toml_value(raw)}")
    return "\n".join(lines) + "\n"
