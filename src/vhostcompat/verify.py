"""Verified publishing: which of a catalog's profiles the running backend honours.

A probe (:mod:`vhostcompat.probe`, or :mod:`vhostcompat.ovsprobe` for an
OVS-DPDK instance) says what a backend offers. :func:`offered_profile`
turns that into a profile of its own (``probed``): the features and
protocol features it offered, the queue pairs GET_QUEUE_NUM answered (1
without MQ), and the largest ring it accepts when that is known. Ring sizes
cannot be asked over vhost-user: the caller states the limit (DPDK's vhost
library refuses SET_VRING_NUM above 32768, the split ring's maximum, so
that is the limit for OVS-DPDK), or profiles that declare one are dropped.

:func:`verify` then compares every catalog profile with that offer under
each key's own rule (:func:`vhostcompat.profiles.compare_profiles`): a
profile is published only if nothing falls short; keys the probe cannot
check (a catalog's own ``[rules]`` keys) fall short by construction, so
they are never promised blindly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vhostcompat.features import ProtocolFeature
from vhostcompat.probe import ProbeResult
from vhostcompat.profiles import CompatProfile, Shortfall, compare_profiles

PROBED_VERSION = "probed"
DPDK_MAX_RING_SIZE = 32768


@dataclass(frozen=True)
class Dropped:
    """A profile the backend cannot honour, and why (one reason per shortfall)."""

    version: str
    shortfalls: tuple[Shortfall, ...]

    @property
    def reasons(self) -> list[str]:
        return [shortfall.reason for shortfall in self.shortfalls]

    @property
    def missing(self) -> list[str]:
        """Feature names (and limits) the backend lacks."""
        return [item for shortfall in self.shortfalls
                for item in (shortfall.missing or (shortfall.key,))]

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "reasons": self.reasons, "missing": self.missing}


@dataclass(frozen=True)
class Verification:
    """The outcome: what may be published (catalog order kept) and what was dropped."""

    offer: CompatProfile
    published: tuple[CompatProfile, ...]
    dropped: tuple[Dropped, ...]

    def lines(self) -> list[str]:
        out = [f"dropped {entry.version}: {'; '.join(entry.reasons)}"
               for entry in self.dropped]
        return out

    def to_json(self) -> dict[str, object]:
        return {"published": [profile.version for profile in self.published],
                "dropped": [entry.to_json() for entry in self.dropped]}


def offered_profile(result: ProbeResult, max_ring_size: int | None) -> CompatProfile:
    """What the probed backend offers, as a profile (version ``probed``)."""
    return CompatProfile(
        PROBED_VERSION,
        result.features,
        result.protocol_features if result.protocol_features is not None
        else ProtocolFeature(0),
        result.queue_pairs if result.queue_pairs is not None else 1,
        max_ring_size,
    )


def verify(profiles: Sequence[CompatProfile], offer: CompatProfile) -> Verification:
    """Split ``profiles`` into those ``offer`` satisfies under every key's rule, and the rest."""
    published: list[CompatProfile] = []
    dropped: list[Dropped] = []
    for profile in profiles:
        shortfalls = compare_profiles(profile, offer, subject="the running backend")
        if shortfalls:
            dropped.append(Dropped(profile.version, shortfalls))
        else:
            published.append(profile)
    return Verification(offer, tuple(published), tuple(dropped))
