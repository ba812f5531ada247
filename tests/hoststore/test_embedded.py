"""hoststore: the embedded store's data model, atomic writes, concurrency and refusals."""

from __future__ import annotations

import asyncio
import fcntl
import json
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import run_bounded
from vhostcompat.errors import HostError, InputError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.hoststore import (
    HOST_FILE,
    LOCK_FILE,
    EmbeddedHostStore,
    HostRecord,
    HostStoreAccessError,
    HostStoreCorruptError,
    HostStoreMissingError,
    NotPublishedError,
    OvsdbHostStore,
    encode_negotiated,
    encode_profile,
    open_host,
    record_from_rows,
)
from vhostcompat.ovsdb import OvsdbRemoteError
from vhostcompat.profiles import CompatProfile, NegotiatedState

T = TypeVar("T")
INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
VERSION_1 = VirtioFeature.VIRTIO_F_VERSION_1
V27 = CompatProfile("upstream.ovs-dpdk.v2.7", VERSION_1 | INDIRECT, ProtocolFeature.MQ, 8, 1024)
V26 = CompatProfile("upstream.ovs-dpdk.v2.6", VERSION_1, ProtocolFeature.MQ, 8, 1024)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return run_bounded(coroutine, 30.0)


def publish(host: Path, *profiles: CompatProfile) -> HostRecord:
    return run(EmbeddedHostStore(str(host)).publish(profiles))


def read(host: Path) -> HostRecord:
    return run(open_host(str(host)).read())


def assign(host: Path, interface: str, version: str) -> None:
    run(open_host(str(host)).assign(interface, version))


def test_publish_creates_the_store_and_reads_back(tmp_path: Path) -> None:
    host = tmp_path / "host-a"
    record = publish(host, V27, V26)
    assert record.versions == (V27.version, V26.version)
    again = read(host)
    assert again.versions == (V27.version, V26.version)
    assert again.profile(V27.version) == V27
    assert again.interfaces == {}


def test_file_mirrors_the_ovsdb_rows(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V27, V26)
    assign(host, "vhu0", V26.version)
    run(open_host(str(host)).record_negotiated("vhu0", NegotiatedState(
        acked_features=VERSION_1, queue_pairs=1, ring_size=256, status="running")))
    data = json.loads((host / HOST_FILE).read_text())
    external_ids = data["Open_vSwitch"]["external_ids"]
    assert external_ids["vhost-compat-versions"] == f"{V27.version},{V26.version}"
    assert json.loads(external_ids[f"vhost-compat-profile-{V26.version}"])["virtio_features"] \
        == "0x100000000"
    interface = data["Interface"]["vhu0"]
    assert interface["options"] == {"vhost-compat-version": V26.version}
    assert interface["external_ids"] == {
        "vhost-compat-acked-features": "0x100000000", "vhost-compat-queue-pairs": "1",
        "vhost-compat-ring-size": "256", "vhost-compat-status": "running"}


def test_rows_decode_the_same_for_any_store() -> None:
    # What an OVSDB store would hand over: the Open_vSwitch row's external_ids
    # and Interface rows (options, external_ids); unrelated rows are left out.
    record = record_from_rows(
        "unix:/run/db.sock",
        {"vhost-compat-versions": V26.version,
         f"vhost-compat-profile-{V26.version}": encode_profile(V26), "system-id": "x"},
        {"vhu0": ({"vhost-compat-version": V26.version, "n_rxq": "2"},
                  encode_negotiated(NegotiatedState(acked_features=VERSION_1))),
         "eth0": ({}, {"iface-id": "abc"})})
    assert record.versions == (V26.version,)
    assert record.profile(V26.version) == V26
    assert set(record.interfaces) == {"vhu0"}
    assert record.interface("vhu0").negotiated.acked_features == VERSION_1


def test_republish_replaces_versions_and_keeps_interfaces(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V27, V26)
    assign(host, "vhu0", V27.version)
    publish(host, V26)
    record = read(host)
    assert record.versions == (V26.version,)
    assert set(record.profiles) == {V26.version}
    assert record.interface("vhu0").version == V27.version


def test_assign_refuses_an_unpublished_version(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    before = (host / HOST_FILE).read_bytes()
    with pytest.raises(NotPublishedError, match=re.escape(f"does not publish {V27.version!r}")):
        assign(host, "vhu0", V27.version)
    assert (host / HOST_FILE).read_bytes() == before


@pytest.mark.parametrize("name", ["", "has space", "tab\tbed", "x" * 256])
def test_assign_refuses_bad_interface_names(tmp_path: Path, name: str) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    with pytest.raises(InputError, match="invalid interface name"):
        assign(host, name, V26.version)


def test_record_negotiated_replaces_the_previous_state(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    store = open_host(str(host))
    run(store.record_negotiated("vhu0", NegotiatedState(
        acked_features=VERSION_1, acked_protocol_features=ProtocolFeature.MQ, ring_size=512)))
    run(store.record_negotiated("vhu0", NegotiatedState(queue_pairs=2)))
    negotiated = read(host).interface("vhu0").negotiated
    assert negotiated == NegotiatedState(queue_pairs=2)


def test_missing_host_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "never-published"
    with pytest.raises(HostStoreMissingError) as caught:
        read(missing)
    assert str(caught.value) == (f"host {missing}: no such host store "
                                 "(run `vhostcompat publish` first)")
    with pytest.raises(HostStoreMissingError):
        assign(missing, "vhu0", V26.version)
    assert not missing.exists(), "a failed write creates nothing"


def test_a_file_is_not_a_host(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(HostStoreMissingError, match="not a host store directory"):
        read(plain)
    with pytest.raises(HostStoreAccessError, match="not a directory"):
        publish(plain, V26)


@pytest.mark.parametrize("address", ["unix:/run/openvswitch/db.sock", "tcp:127.0.0.1:6640",
                                     "unix:/a.sock,tcp:127.0.0.1:6641"])
def test_ovsdb_addresses_open_the_ovsdb_store(address: str) -> None:
    assert isinstance(open_host(address), OvsdbHostStore)


@pytest.mark.parametrize(("address", "reason"), [
    ("ssl:10.0.0.1:6640", "ssl: is not supported"), ("tcp:host:6640", "not an IP address"),
    ("unix:", "needs a socket path"), ("tcp:127.0.0.1:6640,", "empty member")])
def test_malformed_remotes_are_refused_in_one_line(address: str, reason: str) -> None:
    with pytest.raises(OvsdbRemoteError, match=reason):
        open_host(address)


def test_empty_address_is_bad_input() -> None:
    with pytest.raises(InputError):
        open_host(" ")


CORRUPTIONS = {
    "not json": "{ torn",
    "wrong shape": json.dumps({"Open_vSwitch": {}}),
    "non-string value": json.dumps({"Open_vSwitch": {"external_ids": {"k": 1}},
                                    "Interface": {}}),
    "bad versions": json.dumps({"Open_vSwitch": {"external_ids": {
        "vhost-compat-versions": "a b,c"}}, "Interface": {}}),
    "bad profile": json.dumps({"Open_vSwitch": {"external_ids": {
        "vhost-compat-versions": "v", "vhost-compat-profile-v": "{\"version\": \"v\"}"}},
        "Interface": {}}),
    "profile under another name": json.dumps({"Open_vSwitch": {"external_ids": {
        "vhost-compat-profile-w": encode_profile(V26)}}, "Interface": {}}),
    "bad acked features": json.dumps({"Open_vSwitch": {"external_ids": {}}, "Interface": {
        "vhu0": {"options": {}, "external_ids": {"vhost-compat-acked-features": "zz"}}}}),
    "bad ring size": json.dumps({"Open_vSwitch": {"external_ids": {}}, "Interface": {
        "vhu0": {"options": {}, "external_ids": {"vhost-compat-ring-size": "-1"}}}}),
    # issue 11, item 9: what once escaped as a traceback.
    "deeply nested file": '{"Open_vSwitch": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "deeply nested profile": json.dumps({"Open_vSwitch": {"external_ids": {
        "vhost-compat-versions": "v", "vhost-compat-profile-v": "[" * 100_000}},
        "Interface": {}}),
    "superscript count": json.dumps({"Open_vSwitch": {"external_ids": {}}, "Interface": {
        "vhu0": {"options": {}, "external_ids": {"vhost-compat-queue-pairs": "\u00b2"}}}}),
    "5000-digit count": json.dumps({"Open_vSwitch": {"external_ids": {}}, "Interface": {
        "vhu0": {"options": {}, "external_ids": {"vhost-compat-ring-size": "9" * 5000}}}}),
    "bad OVS status": json.dumps({"Open_vSwitch": {"external_ids": {}}, "Interface": {
        "vhu0": {"options": {"vhost-compat-version": "v"}, "external_ids": {},
                 "status": {"num_of_vrings": "two"}}}}),
}


@pytest.mark.parametrize("label", sorted(CORRUPTIONS))
def test_corrupt_store_is_refused_and_left_unchanged(tmp_path: Path, label: str) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    (host / HOST_FILE).write_text(CORRUPTIONS[label])
    before = (host / HOST_FILE).read_bytes()
    with pytest.raises(HostStoreCorruptError) as caught:
        read(host)
    assert str(caught.value).startswith(f"host {host}: corrupt store: ")
    assert "\n" not in str(caught.value)
    for write in (lambda: assign(host, "vhu0", V26.version),
                  lambda: publish(host, V26),
                  lambda: run(open_host(str(host)).record_negotiated(
                      "vhu0", NegotiatedState(ring_size=256)))):
        with pytest.raises(HostStoreCorruptError):
            write()
        assert (host / HOST_FILE).read_bytes() == before


def test_corrupt_counts_are_named_briefly(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    (host / HOST_FILE).write_text(CORRUPTIONS["5000-digit count"])
    with pytest.raises(HostStoreCorruptError, match=r"ring-size='99999999999999999999\.\.\. "
                       r"\(5000 characters\)' is not a positive integer"):
        read(host)


def test_a_planted_lock_symlink_is_refused_and_nothing_is_created_outside(
        tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    (host / LOCK_FILE).unlink()
    outside = tmp_path / "outside" / "planted"
    (tmp_path / "outside").mkdir()
    (host / LOCK_FILE).symlink_to(outside)  # dangling: O_CREAT would create it
    before = (host / HOST_FILE).read_bytes()
    with pytest.raises(HostStoreAccessError) as caught:
        assign(host, "vhu0", V26.version)
    assert str(caught.value) == (f"host {host}: the lock file {LOCK_FILE} is a symbolic "
                                 "link: refused")
    assert not outside.exists()
    assert (host / HOST_FILE).read_bytes() == before


def test_temporary_files_never_follow_planted_symlinks(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # Every name the old code would have used, and a stale-looking one.
    for name in (f".{HOST_FILE}.{os.getpid()}.tmp", f".{HOST_FILE}.planted.tmp"):
        (host / name).symlink_to(victim)
    assign(host, "vhu0", V26.version)
    assert victim.read_text() == "precious"
    assert read(host).interface("vhu0").version == V26.version
    assert sorted(path.name for path in host.iterdir()) == [LOCK_FILE, HOST_FILE]


def test_failed_rename_leaves_the_previous_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "h"
    publish(host, V27, V26)
    before = (host / HOST_FILE).read_bytes()

    def refuse(source: object, destination: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(HostStoreAccessError, match="No space left on device"):
        assign(host, "vhu0", V26.version)
    assert (host / HOST_FILE).read_bytes() == before
    assert sorted(path.name for path in host.iterdir()) == [".vhostcompat-host.lock", HOST_FILE]


def test_lock_wait_is_bounded(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    fd = os.open(host / ".vhostcompat-host.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        store = EmbeddedHostStore(str(host), lock_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(HostStoreAccessError, match="locked by another writer"):
            run(store.assign("vhu0", V26.version))
        assert time.monotonic() - started < 5
    finally:
        os.close(fd)
    assign(host, "vhu0", V26.version)  # free again


# --- several processes writing at once ---------------------------------------

WRITERS = 4
INTERFACES_EACH = 12


def _writer(host: str, index: int) -> None:
    for number in range(INTERFACES_EACH):
        asyncio.run(open_host(host).assign(f"vhu{index}-{number}", V26.version))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(host), index))
               for index in range(WRITERS)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    interfaces = read(host).interfaces
    assert len(interfaces) == WRITERS * INTERFACES_EACH
    assert all(record.version == V26.version for record in interfaces.values())


def _endless_writer(host: str) -> None:
    number = 0
    while True:
        asyncio.run(open_host(host).assign(f"vhu{number}", V26.version))
        number += 1


def test_killed_writer_leaves_a_whole_file(tmp_path: Path) -> None:
    host = tmp_path / "h"
    publish(host, V26)
    context = multiprocessing.get_context("fork")
    writer = context.Process(target=_endless_writer, args=(str(host),))
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while len(read(host).interfaces) < 20:  # wait until it is busy writing
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.join(timeout=10)
    record = read(host)  # parses: never torn
    assert len(record.interfaces) >= 20
    # As if the writer had died between writing its temporary file and renaming it.
    (host / f".{HOST_FILE}.99999.tmp").write_text("{ half a")
    assign(host, "after", V26.version)  # the lock died with the writer
    assert not list(host.glob(".*.tmp")), "stale temporary files are cleaned up"
    assert "after" in read(host).interfaces


def test_host_error_is_a_vhostcompat_error() -> None:
    assert issubclass(HostStoreCorruptError, HostError)
    assert HostStoreCorruptError("h", "x").exit_status == 2
