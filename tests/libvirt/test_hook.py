"""hook: libvirt's arguments, and admitting a domain against embedded host stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import snapshot
from tests.helpers import run_bounded
from tests.libvirt.conftest import FC26, MAC, MAC2, V26, V27, domain_xml
from vhostcompat.errors import HostError, InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import HostStore, ModeWrite, open_host
from vhostcompat.libvirt import hook
from vhostcompat.libvirt.calls import HookCall, HookUsageError
from vhostcompat.libvirt.domain import DomainXmlError
from vhostcompat.libvirt.hook import HookDecision, HookRefusal
from vhostcompat.libvirt.metadata import InterfaceMetadata
from vhostcompat.manager import read_host
from vhostcompat.profiles import NegotiatedState, Verdict, load_default_catalog

INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
VERSION_1 = VirtioFeature.VIRTIO_F_VERSION_1


def admit(xml: bytes, host: str) -> HookDecision:
    return run_bounded(hook.admit_domain(xml, host, load_default_catalog))


def modes(host: str) -> dict[str, str | None]:
    record = run_bounded(read_host(host))
    return {name: interface.version for name, interface in record.interfaces.items()}


# --- libvirt's arguments ------------------------------------------------------------

@pytest.mark.parametrize(("arguments", "checks"), [
    (["vm1", "prepare", "begin", "-"], True),
    (["vm1", "migrate", "begin", "-"], True),
    (["vm1", "start", "begin", "-"], False),
    (["vm1", "started", "begin", "-"], False),
    (["vm1", "stopped", "end", "-"], False),
    (["vm1", "release", "end", "-"], False),
    (["vm1", "restore", "begin", "-"], False),
    (["vm1", "reconnect", "begin", "-"], False),
    (["vm1", "attach", "begin", "-"], False),
])
def test_what_libvirt_sends(arguments: list[str], checks: bool) -> None:
    assert HookCall.parse(arguments).checks_domain is checks


@pytest.mark.parametrize(("arguments", "fragment"), [
    ([], "got 0"),
    (["vm1", "prepare", "begin"], "got 3"),
    (["vm1", "prepare", "begin", "-", "extra"], "got 5"),
    (["", "prepare", "begin", "-"], "empty domain name"),
    (["vm1", "teleport", "begin", "-"], "unknown hook operation 'teleport'"),
    (["vm1", "prepare", "end", "-"], "sub-operation 'begin', not 'end'"),
    (["vm1", "stopped", "begin", "-"], "sub-operation 'end', not 'begin'"),
])
def test_what_libvirt_never_sends_is_refused(arguments: list[str], fragment: str) -> None:
    with pytest.raises(HookUsageError, match=fragment):
        HookCall.parse(arguments)


# --- admitting a domain ---------------------------------------------------------------

def test_a_domain_without_our_metadata_passes_untouched(new_host: str) -> None:
    before = snapshot(Path(new_host))
    decision = admit(domain_xml(macs=[MAC]), new_host)
    assert decision == HookDecision("vm1", ())
    assert snapshot(Path(new_host)) == before


def test_a_published_version_is_admitted_and_its_mode_written(new_host: str) -> None:
    decision = admit(domain_xml(InterfaceMetadata(MAC, V27, "vhu0")), new_host)
    assert [(a.iface, a.mode, a.check.verdict) for a in decision.admissions] == [
        ("vhu0", V27, Verdict.COMPATIBLE)]
    assert decision.written == ("vhu0",)
    assert modes(new_host) == {"vhu0": V27}


def test_the_store_name_defaults_to_the_sockets_last_component(new_host: str) -> None:
    admit(domain_xml(InterfaceMetadata(MAC, V26), InterfaceMetadata(MAC2, V27)), new_host)
    assert modes(new_host) == {"vhu-56": V26, "vhu-57": V27}


def test_a_second_run_writes_nothing(new_host: str) -> None:
    xml = domain_xml(InterfaceMetadata(MAC, V27, "vhu0"))
    admit(xml, new_host)
    before = snapshot(Path(new_host))
    assert admit(xml, new_host).written == ()
    assert snapshot(Path(new_host)) == before


def test_a_profile_that_satisfies_the_version_by_content_becomes_the_mode(
        distro_host: str) -> None:
    decision = admit(domain_xml(InterfaceMetadata(MAC, V26, "vhu0")), distro_host)
    assert decision.admissions[0].check.verdict is Verdict.COMPATIBLE_BY_CONTENT
    assert modes(distro_host) == {"vhu0": FC26}


def assert_refused(xml: bytes, host: str, *fragments: str) -> None:
    before = snapshot(Path(host))
    with pytest.raises(HookRefusal) as caught:
        admit(xml, host)
    message = str(caught.value)
    assert message.startswith(f"domain vm1 cannot run on host {host}: interface ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert caught.value.exit_status == 1
    assert snapshot(Path(host)) == before


def test_a_version_the_host_cannot_take_is_refused_naming_the_feature(old_host: str) -> None:
    assert_refused(domain_xml(InterfaceMetadata(MAC, V27, "vhu0")), old_host,
                   f"{MAC} (vhu0) in {V27}", f"does not publish {V27}",
                   "VIRTIO_RING_F_INDIRECT_DESC (bit 28)")


def test_what_the_guest_negotiated_is_checked_too(old_host: str) -> None:
    acked = NegotiatedState(VERSION_1 | INDIRECT)
    assert_refused(domain_xml(InterfaceMetadata(MAC, V26, "vhu0", acked)), old_host,
                   "VIRTIO_RING_F_INDIRECT_DESC")
    within = NegotiatedState(VERSION_1, queue_pairs=1)
    admit(domain_xml(InterfaceMetadata(MAC, V26, "vhu0", within)), old_host)
    assert modes(old_host) == {"vhu0": V26}


def test_an_unknown_version_is_refused_as_unknown(old_host: str) -> None:
    assert_refused(domain_xml(InterfaceMetadata(MAC, "nobody.knows.v1", "vhu0")), old_host,
                   "does not publish nobody.knows.v1", "contents of nobody.knows.v1 are unknown")


def test_one_refused_interface_keeps_the_others_unwritten(old_host: str) -> None:
    assert_refused(domain_xml(InterfaceMetadata(MAC, V26, "ok0"),
                              InterfaceMetadata(MAC2, V27, "bad0")), old_host, "bad0")
    assert modes(old_host) == {}


@pytest.mark.parametrize(("xml", "error", "fragment"), [
    (domain_xml(InterfaceMetadata(MAC, V26), macs=[MAC2]), InputError,
     f"names {MAC}, which is no vhost-user interface"),
    (domain_xml(InterfaceMetadata(MAC, V26, "same"), InterfaceMetadata(MAC2, V26, "same")),
     InputError, "two interfaces map to store interface same"),
    (b"<domain><name>vm1</name>", DomainXmlError, "not well-formed"),
    (domain_xml(InterfaceMetadata(MAC, V26)).replace(b'version="', b'version="bad '),
     InputError, "not a valid compatibility version"),
])
def test_bad_input_is_refused_before_anything_is_written(
        old_host: str, xml: bytes, error: type[Exception], fragment: str) -> None:
    before = snapshot(Path(old_host))
    with pytest.raises(error, match=fragment):
        admit(xml, old_host)
    assert snapshot(Path(old_host)) == before


def test_a_missing_store_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="no such host store"):
        admit(domain_xml(InterfaceMetadata(MAC, V26)), str(tmp_path / "nowhere"))


class FailingSecondWrite:
    """A host store whose second mode write fails, as a full disk would."""

    def __init__(self, store: HostStore) -> None:
        self.store = store
        self.writes = 0

    async def __aenter__(self) -> FailingSecondWrite:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.store.close()

    async def read(self) -> object:
        return await self.store.read()

    async def write_mode(self, change: ModeWrite) -> None:
        self.writes += 1
        if self.writes == 2:
            raise HostError("disk full")
        await self.store.write_mode(change)


def test_a_write_that_fails_half_way_puts_back_what_was_written(
        new_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    admit(domain_xml(InterfaceMetadata(MAC, V26, "vhu0")), new_host)
    monkeypatch.setattr(hook, "open_host", lambda address: FailingSecondWrite(
        open_host(address)))
    with pytest.raises(HostError, match="disk full"):
        admit(domain_xml(InterfaceMetadata(MAC, V27, "vhu0"),
                         InterfaceMetadata(MAC2, V27, "vhu1")), new_host)
    assert modes(new_host) == {"vhu0": V26}


def test_a_half_way_failure_leaves_an_interface_that_had_no_mode_without_one(
        new_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(Path(new_host))
    monkeypatch.setattr(hook, "open_host", lambda address: FailingSecondWrite(
        open_host(address)))
    with pytest.raises(HostError, match="disk full"):
        admit(domain_xml(InterfaceMetadata(MAC, V27, "vhu0"),
                         InterfaceMetadata(MAC2, V27, "vhu1")), new_host)
    assert modes(new_host) == {}
    assert snapshot(Path(new_host)) == before
