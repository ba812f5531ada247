"""Compatibility profiles: the model, catalogs, and the pure selection and checks.

Public API (import from ``vhostcompat.profiles``):

* :class:`CompatProfile` (frozen): ``version``, ``virtio_features``
  (:class:`~vhostcompat.features.VirtioFeature`), ``protocol_features``,
  ``max_queue_pairs``, ``max_ring_size``, ``extra`` (catalog-declared keys);
  ``items()`` iterates every declared key with its :class:`KeySpec` (rule, kind).
* :class:`Rule` (subset / at_most / at_least / equal), :data:`BUILTIN_KEYS`.
* :class:`NegotiatedState`: what an interface actually negotiated.
* :func:`profile_to_mapping` / :func:`profile_from_mapping`: the self-describing
  JSON form hosts publish.
* :func:`load_catalog`, :func:`load_default_catalog`,
  :func:`load_catalog_or_default` -> :class:`Catalog` (``versions``, ``get``,
  ``find``, ``only``).
* :func:`select_version` -> :class:`Selection`.
* :func:`compare_profiles`, :func:`check_negotiated` -> :class:`Shortfall` tuples;
  :func:`check_destination` -> :class:`DestinationCheck` (:class:`Verdict`);
  :func:`diff_profiles` -> :class:`KeyDifference` tuples.
"""

from vhostcompat.profiles.catalog import (
    Catalog,
    CatalogEntry,
    load_catalog,
    load_catalog_or_default,
    load_default_catalog,
    parse_catalog_text,
)
from vhostcompat.profiles.checks import (
    YES_VERDICTS,
    DestinationCheck,
    KeyDifference,
    Shortfall,
    Verdict,
    check_destination,
    check_negotiated,
    compare_profiles,
    diff_profiles,
)
from vhostcompat.profiles.model import (
    BUILTIN_KEYS,
    CompatProfile,
    ExtraKey,
    KeySpec,
    NegotiatedState,
    Rule,
    ValueKind,
    describe_value,
    feature_labels,
    profile_from_mapping,
    profile_to_mapping,
)
from vhostcompat.profiles.selection import Selection, preference_order, select_version

__all__ = [
    "BUILTIN_KEYS",
    "YES_VERDICTS",
    "Catalog",
    "CatalogEntry",
    "CompatProfile",
    "DestinationCheck",
    "ExtraKey",
    "KeyDifference",
    "KeySpec",
    "NegotiatedState",
    "Rule",
    "Selection",
    "Shortfall",
    "ValueKind",
    "Verdict",
    "check_destination",
    "check_negotiated",
    "compare_profiles",
    "describe_value",
    "diff_profiles",
    "feature_labels",
    "load_catalog",
    "load_catalog_or_default",
    "load_default_catalog",
    "parse_catalog_text",
    "preference_order",
    "profile_from_mapping",
    "profile_to_mapping",
    "select_version",
]
