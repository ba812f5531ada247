"""Pure version selection over several hosts' published lists.

The proposal's rule: the first version every host supports, in preference
order (newest first), unless an administrator pins one. The preference order
is the first host's published order (the host the VM starts on) unless the
caller passes one (e.g. a catalog's order); versions no list in that order
mentions are appended in the order the hosts list them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError


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


def select_version(published: Mapping[str, Sequence[str]], prefer: str | None = None,
                   preference: Sequence[str] | None = None) -> Selection:
    """Select the version for an interface that may run on any of these hosts.

    ``published`` maps each host (in the caller's order, first = the host the
    VM starts on) to its published versions, newest first. ``prefer`` pins a
    version: it is selected only if every host publishes it.
    """
    if not published:
        raise InputError("no hosts to select a version for")
    hosts = list(published)
    candidates = preference_order(published, preference or published[hosts[0]])
    have = {host: set(versions) for host, versions in published.items()}
    if prefer is not None:
        missing = [host for host in hosts if prefer not in have[host]]
        if not missing:
            return Selection(prefer, True, candidates, (),
                             (f"{prefer} is pinned and every host publishes it",))
        lacking: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (host, (prefer,)) for host in missing)
        reasons = tuple(
            f"{host} does not publish {prefer} (it publishes: "
            f"{', '.join(published[host]) or 'nothing'})" for host in missing)
        return Selection(None, True, candidates, lacking, reasons)
    for version in candidates:
        if all(version in have[host] for host in hosts):
            skipped = candidates[:candidates.index(version)]
            reason = f"{version} is the first version every host publishes"
            if skipped:
                reason += f" (not everywhere: {', '.join(skipped)})"
            return Selection(version, False, candidates, (), (reason,))
    lacking = tuple(
        (host, tuple(version for version in candidates if version not in have[host]))
        for host in hosts)
    reasons = tuple(f"{host} lacks: {', '.join(versions)}" for host, versions in lacking
                    if versions)
    return Selection(None, False, candidates, lacking,
                     ("no version is published by every host", *reasons))
