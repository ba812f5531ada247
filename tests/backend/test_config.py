"""How the reference backend composes its offer from a profile or from options."""

from __future__ import annotations

import pytest

from tests.backend.helpers import F, P
from vhostcompat.backend import BackendConfig
from vhostcompat.errors import InputError
from vhostcompat.profiles import CompatProfile, load_default_catalog
from vhostcompat.vhostuser.session import MAX_QUEUE_SIZE


@pytest.mark.parametrize("version", load_default_catalog().versions)
def test_a_shipped_profile_is_offered_exactly(version: str) -> None:
    profile = load_default_catalog().get(version)
    config = BackendConfig.from_profile(profile)
    # The shipped catalogs list the vhost bits themselves: nothing is added.
    assert config.features == profile.virtio_features
    assert config.protocol_features == profile.protocol_features
    assert config.queue_pairs == profile.max_queue_pairs
    assert config.max_ring_size == profile.max_ring_size
    assert config.version == version
    assert config.notes == ()
    # Every shipped profile can carry a migration.
    assert not [warning for warning in config.warnings() if "migration" in warning]
    limits = config.session_limits()
    assert limits.max_rings == 2 * config.queue_pairs
    assert limits.max_ring_size == config.max_ring_size


def test_protocol_features_bring_their_gate_bit_with_a_note() -> None:
    profile = CompatProfile("no-gate", F.VIRTIO_F_VERSION_1 | F.VHOST_F_LOG_ALL,
                            P.LOG_SHMFD | P.MQ)
    config = BackendConfig.from_profile(profile)
    assert config.features == profile.virtio_features | F.VHOST_USER_F_PROTOCOL_FEATURES
    assert config.notes and "VHOST_USER_F_PROTOCOL_FEATURES" in config.notes[0]
    assert config.notes[0] in config.warnings()


def test_a_profile_without_protocol_features_offers_none_and_says_migration_is_blocked() -> None:
    profile = CompatProfile("bare", F.VIRTIO_F_VERSION_1 | F.VIRTIO_NET_F_CSUM)
    config = BackendConfig.from_profile(profile)
    assert config.protocol_features == P(0)
    assert (config.queue_pairs, config.max_ring_size) == (1, MAX_QUEUE_SIZE)
    warnings = config.warnings()
    assert any("migration blocked: lacks VHOST_F_LOG_ALL" in warning for warning in warnings)
    assert any("VHOST_USER_F_PROTOCOL_FEATURES" in warning for warning in warnings)


def test_options_warn_about_what_a_frontend_will_miss() -> None:
    config = BackendConfig.from_options(
        F.VIRTIO_F_VERSION_1 | F.VHOST_F_LOG_ALL | F.VHOST_USER_F_PROTOCOL_FEATURES,
        P.LOG_SHMFD | P.PAGEFAULT, queue_pairs=4)
    warnings = config.warnings()
    assert any("4 queue pairs but no MQ" in warning for warning in warnings)
    assert any("PAGEFAULT" in warning and "disconnected" in warning for warning in warnings)
    assert not any("migration" in warning for warning in warnings)
    assert "4 queue pair(s)" in config.describe()


@pytest.mark.parametrize(("options", "fragment"), [
    ({"queue_pairs": 0}, "queue pairs must be 1..128"),
    ({"queue_pairs": 129}, "queue pairs must be 1..128"),
    ({"max_ring_size": 0}, "max ring size must be 1..32768"),
    ({"max_ring_size": 65536}, "max ring size must be 1..32768"),
])
def test_impossible_limits_are_refused(options: dict[str, int], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment.replace(".", r"\.")):
        BackendConfig.from_options(F.VIRTIO_F_VERSION_1, None, **options)


def test_protocol_features_without_the_gate_cannot_be_built_directly() -> None:
    with pytest.raises(InputError, match="VHOST_USER_F_PROTOCOL_FEATURES"):
        BackendConfig(F.VIRTIO_F_VERSION_1, P.MQ)
