"""profiles.catalog: the shipped catalogs, loading rules, and every refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vhostcompat.errors import CatalogError, UnknownVersionError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles import (
    compare_profiles,
    load_catalog,
    load_catalog_or_default,
    load_default_catalog,
)
from vhostcompat.profiles.catalog import SYSTEM_CATALOG_ENV

V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"
DPDK, DPDK_TSO = "debian12.dpdk-vhost.v22.11", "debian12.dpdk-vhost.v22.11-tso"

GOOD = """
[[profile]]
version = "new"
virtio_features = ["VIRTIO_F_VERSION_1", "VIRTIO_RING_F_INDIRECT_DESC"]
max_queue_pairs = 2

[[profile]]
version = "old"
virtio_features = ["VIRTIO_F_VERSION_1"]
"""


@pytest.fixture(autouse=True)
def no_system_catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's /etc/vhostcompat out of these tests."""
    monkeypatch.setenv(SYSTEM_CATALOG_ENV, str(tmp_path / "no-such-system-dir"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_upstream_example_differs_by_indirect_descriptors_only() -> None:
    catalog = load_default_catalog()
    v27, v26 = catalog.get(V27), catalog.get(V26)
    assert v27.virtio_features & ~v26.virtio_features == \
        VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
    assert not v26.virtio_features & ~v27.virtio_features
    assert [shortfall.missing for shortfall in compare_profiles(v27, v26)] == [
        ("VIRTIO_RING_F_INDIRECT_DESC (bit 28)",)]
    assert catalog.versions.index(V27) < catalog.versions.index(V26), "newest first"


def test_distro_variant_is_upstream_26_plus_a_backport() -> None:
    catalog = load_default_catalog()
    assert compare_profiles(catalog.get(V26), catalog.get(FC26)) == ()
    assert compare_profiles(catalog.get(FC26), catalog.get(V26)) != ()


def test_dpdk_catalog_matches_what_testpmd_answered() -> None:
    # GET_FEATURES / GET_PROTOCOL_FEATURES / GET_QUEUE_NUM as measured (FIELD-NOTES.md).
    catalog = load_default_catalog()
    assert catalog.get(DPDK).virtio_features == 0xD7C66E7CB
    assert catalog.get(DPDK_TSO).virtio_features == 0xD7C66FFCB
    assert catalog.get(DPDK_TSO).virtio_features & ~catalog.get(DPDK).virtio_features == (
        VirtioFeature.VIRTIO_NET_F_HOST_TSO4 | VirtioFeature.VIRTIO_NET_F_HOST_TSO6)
    for version in (DPDK, DPDK_TSO):
        assert catalog.get(version).protocol_features == ProtocolFeature(0x10CBF)
        assert catalog.get(version).max_queue_pairs == 128


def test_files_and_directories_load_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "catalog.d"
    directory.mkdir()
    write(directory / "20-b.toml", '[[profile]]\nversion = "b"\nvirtio_features = []\n')
    write(directory / "10-a.toml", '[[profile]]\nversion = "a"\nvirtio_features = []\n')
    write(directory / "ignored.txt", "not a catalog")
    single = write(tmp_path / "one.toml", GOOD)
    catalog = load_catalog([single, directory])
    assert catalog.versions == ("new", "old", "a", "b")
    assert catalog.entry("a").source.endswith("10-a.toml")


def test_default_catalog_adds_the_system_directory(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    system.mkdir()
    write(system / "site.toml", '[[profile]]\nversion = "site.v1"\nvirtio_features = []\n')
    monkeypatch.setenv(SYSTEM_CATALOG_ENV, str(system))
    catalog = load_default_catalog()
    assert catalog.versions[-1] == "site.v1"
    assert V27 in catalog
    # --catalog replaces the default entirely.
    assert load_catalog_or_default([system / "site.toml"]).versions == ("site.v1",)


def test_declared_key_in_a_catalog_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", """
[rules]
max_mtu = "at_most"

[[profile]]
version = "v"
virtio_features = []
max_mtu = 9000
""")
    profile = load_catalog([path]).get("v")
    assert profile.lookup("max_mtu") is not None


def test_unknown_version_names_the_known_ones(tmp_path: Path) -> None:
    catalog = load_catalog([write(tmp_path / "c.toml", GOOD)])
    with pytest.raises(UnknownVersionError, match="new, old"):
        catalog.get("nope")
    with pytest.raises(UnknownVersionError):
        catalog.only(["old", "nope"])
    assert catalog.only(["old", "new"]).versions == ("new", "old")


# Bad input: each refused as a whole with file, profile and key named.
BAD_CATALOGS = [
    ("malformed TOML", "[[profile]\nversion = 1", None, None, "malformed TOML"),
    ("unknown feature", '[[profile]]\nversion = "v"\nvirtio_features = ["VIRTIO_F_BOGUS"]\n',
     "v", "virtio_features", "unknown virtio feature 'VIRTIO_F_BOGUS'"),
    ("unknown protocol feature",
     '[[profile]]\nversion = "v"\nvirtio_features = []\nprotocol_features = ["TELEPORT"]\n',
     "v", "protocol_features", "TELEPORT"),
    ("wrong type", '[[profile]]\nversion = "v"\nvirtio_features = []\nmax_ring_size = "1k"\n',
     "v", "max_ring_size", "expected an integer, got string"),
    ("duplicate version", GOOD + '\n[[profile]]\nversion = "new"\nvirtio_features = []\n',
     "new", "version", "duplicate version"),
    ("unknown key", '[[profile]]\nversion = "v"\nvirtio_features = []\nmax_mtu = 9000\n',
     "v", "max_mtu", "unknown key without a declared rule"),
    ("empty file", "", None, None, "defines no profiles"),
    ("rules only", '[rules]\nmax_mtu = "at_most"\n', None, None, "defines no profiles"),
    ("bad rule", '[rules]\nmax_mtu = "smaller"\n[[profile]]\nversion = "v"\n'
     'virtio_features = []\n', None, "rules", "unknown rule"),
    ("unknown top level", 'title = "x"\n' + GOOD, None, "title", "unknown top-level key"),
    ("profile not an array", '[profile]\nversion = "v"\n', None, "profile", "array of tables"),
    ("missing version", "[[profile]]\nvirtio_features = []\n", "#1", "version", "missing"),
]


@pytest.mark.parametrize("case", BAD_CATALOGS, ids=[case[0] for case in BAD_CATALOGS])
def test_bad_catalog_is_refused_with_file_profile_and_key(
        tmp_path: Path, case: tuple[str, str, str | None, str | None, str]) -> None:
    _, text, profile, key, fragment = case
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(CatalogError) as caught:
        load_catalog([path])
    error = caught.value
    assert error.path == str(path)
    assert error.profile == profile
    assert error.key == key
    assert fragment in str(error)
    assert "\n" not in str(error), "one line"


def test_duplicate_across_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path / "a.toml", GOOD)
    second = write(tmp_path / "b.toml", '[[profile]]\nversion = "old"\nvirtio_features = []\n')
    with pytest.raises(CatalogError, match=r"b\.toml.*'old'.*already defined in .*a\.toml"):
        load_catalog([first, second])


def test_missing_and_empty_locations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such catalog"):
        load_catalog([tmp_path / "absent.toml"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match=re.escape("no *.toml")):
        load_catalog([tmp_path / "empty"])
    with pytest.raises(CatalogError, match="no catalog files given"):
        load_catalog([])


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[profile]]\nversion = "\xe9"\n')
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog([path])


def test_one_bad_file_refuses_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", GOOD)
    write(tmp_path / "b.toml", "[[profile]]\nversion = 3\n")
    with pytest.raises(CatalogError, match=r"b\.toml"):
        load_catalog([tmp_path])


def test_ovs_dpdk_catalog_matches_what_ovs_answered() -> None:
    # GET_FEATURES of an OVS 3.1 dpdkvhostuserclient port, as measured (FIELD-NOTES.md).
    catalog = load_default_catalog()
    tso, default, base = (catalog.get(f"debian12.ovs-dpdk.v3.1{suffix}")
                          for suffix in ("-tso", "", "-base"))
    assert (tso.virtio_features, default.virtio_features) == (0xD7C669FCB, 0xD7C66A7CA)
    assert base.virtio_features == tso.virtio_features & default.virtio_features
    assert {tso.protocol_features, default.protocol_features, base.protocol_features} == {
        ProtocolFeature(0x10CBF)}
    assert tso.virtio_features & ~default.virtio_features == (
        VirtioFeature.VIRTIO_NET_F_CSUM | VirtioFeature.VIRTIO_NET_F_HOST_TSO4
        | VirtioFeature.VIRTIO_NET_F_HOST_TSO6)
