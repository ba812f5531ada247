"""Pure version selection over several hosts' published lists.

The proposal's rule: the first version every host supports, in preference
order (newest first), unless an administrator pins one. The preference order
is the first host's published order (the host the VM starts on) unless the
caller passes one (e.g. a catalog's order); versions no list in that order
mentions are appended in the order the hosts list them.

A host supports a version when it publishes it, or, given the hosts'
published profiles (``profiles``), when one of its profiles satisfies that
version's contents under every key's rule ("by content"): hosts that each
publish only their own captured profile (``probe --as-profile``) still meet
on a version one of them publishes, e.g. a baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError
from vhostcompat.profiles.checks import compare_profiles
from vhostcompat.profiles.model import CompatProfile


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection; ``version`` is ``None`` when there is none."""

    version: str | None
    pinned: bool
    candidates: tuple[str, ...]
    lacking: tuple[tuple[str, tuple[str, ...]], ...]
    reasons: tuple[str, ...]

    @property
    def found(self) -> bool:
        return self.version is not None


def preference_order(published: Mapping[str, Sequence[str]],
                     preference: Sequence[str] | None = None) -> tuple[str, ...]:
    """Every version any host publishes, most preferred first."""
    order: list[str] = list(dict.fromkeys(preference or ()))
    seen = set(order)
    for versions in published.values():
        for version in versions:
            if version not in seen:
                seen.add(version)
                order.append(version)
    return tuple(order)


def _satisfies_by_content(content: CompatProfile | None,
                          profiles: Sequence[CompatProfile]) -> str | None:
    """The first of a host's profiles that satisfies ``content``, if any."""
    if content is None:
        return None
    for profile in profiles:
        if not compare_profiles(content, profile):
            return profile.version
    return None


def select_version(published: Mapping[str, Sequence[str]], prefer: str | None = None,
                   preference: Sequence[str] | None = None,
                   profiles: Mapping[str, Sequence[CompatProfile]] | None = None,
                   ) -> Selection:
    """Select the version for an interface that may run on any of these hosts.

    ``published`` maps each host (in the caller's order, first = the host the
    VM starts on) to its published versions, newest first. ``prefer`` pins a
    version: it is selected only if every host supports it. ``profiles``
    (host -> its published profiles) lets a host support a version it does
    not publish by content; a version's contents are those of the first
    host publishing it.
    """
    if not published:
        raise InputError("no hosts to select a version for")
    hosts = list(published)
    candidates = preference_order(published, preference or published[hosts[0]])
    have = {host: set(versions) for host, versions in published.items()}
    by_content: dict[str, list[str]] = {}
    if profiles:
        contents: dict[str, CompatProfile] = {}
        for host in hosts:
            for profile in profiles.get(host, ()):
                contents.setdefault(profile.version, profile)
        for version in candidates:
            for host in hosts:
                if version in have[host]:
                    continue
                match = _satisfies_by_content(contents.get(version), profiles.get(host, ()))
                if match is not None:
                    have[host].add(version)
                    by_content.setdefault(version, []).append(
                        f"{host} satisfies {version} by content (its {match})")
    if prefer is not None:
        missing = [host for host in hosts if prefer not in have[host]]
        if not missing:
            return Selection(prefer, True, candidates, (),
                             (f"{prefer} is pinned and every host supports it",
                              *by_content.get(prefer, ())))
        lacking: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (host, (prefer,)) for host in missing)
        reasons = tuple(
            f"{host} does not publish {prefer} (it publishes: "
            f"{', '.join(published[host]) or 'nothing'})" for host in missing)
        return Selection(None, True, candidates, lacking, reasons)
    for version in candidates:
        if all(version in have[host] for host in hosts):
            skipped = candidates[:candidates.index(version)]
            reason = f"{version} is the first version every host supports"
            if skipped:
                reason += f" (not everywhere: {', '.join(skipped)})"
            return Selection(version, False, candidates, (),
                             (reason, *by_content.get(version, ())))
    lacking = tuple(
        (host, tuple(version for version in candidates if version not in have[host]))
        for host in hosts)
    reasons = tuple(f"{host} lacks: {', '.join(versions)}" for host, versions in lacking
                    if versions)
    return Selection(None, False, candidates, lacking,
                     ("no version is published by every host", *reasons))

