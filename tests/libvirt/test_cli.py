"""``vhostcompat libvirt-xml --metadata`` and ``libvirt-hook``: output, exit status, script."""

from __future__ import annotations

import functools
import io
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import snapshot
from tests.helpers import CliResult, run_bounded, run_cli
from tests.libvirt.conftest import MAC, MAC2, V26, V27, domain_xml
from vhostcompat.hoststore import open_host
from vhostcompat.libvirt.calls import HOOK_SCRIPT_NAME
from vhostcompat.libvirt.metadata import (
    DomainMetadata,
    InterfaceMetadata,
    parse_metadata_element,
)
from vhostcompat.profiles import NegotiatedState

Hook = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Hook:
    """``vhostcompat ARGS...`` in-process, with ``stdin=`` bytes as its standard input."""

    def call(*argv: str, stdin: bytes = b"") -> CliResult:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        return run_cli(capsys, *argv)

    return call


def assert_one_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- libvirt-xml --metadata -------------------------------------------------------------

def test_metadata_prints_an_element_that_reads_back(cli: Hook) -> None:
    result = cli("libvirt-xml", "--metadata", "--mac", MAC, "--version", V27, "--iface", "vhu0",
                 "--mac", MAC2.upper(), "--version", V26, "--iface", "vhu1")
    assert result.status == 0, result.stderr
    assert parse_metadata_element(ET.fromstring(result.stdout)) == DomainMetadata((
        InterfaceMetadata(MAC, V27, "vhu0"), InterfaceMetadata(MAC2, V26, "vhu1")))


def test_metadata_carries_what_a_host_recorded(cli: Hook, new_host: str) -> None:
    state = NegotiatedState(queue_pairs=1, ring_size=256)
    run_bounded(open_host(new_host).assign("vhu0", V26))
    run_bounded(open_host(new_host).record_negotiated("vhu0", state))
    result = cli("libvirt-xml", "--metadata", "--mac", MAC, "--version", V26, "--iface", "vhu0",
                 "--negotiated-from", new_host)
    assert result.status == 0, result.stderr
    entry = parse_metadata_element(ET.fromstring(result.stdout)).interfaces[0]
    assert entry.negotiated == state


@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "at least one --mac"),
    (["--mac", MAC], "1 --mac but 0 --version"),
    (["--mac", MAC, "--version", V26, "--iface", "a", "--iface", "b"], "2 --iface for 1"),
    (["--mac", MAC, "--version", "nobody.v1"], "unknown version 'nobody.v1'"),
    (["--mac", "52:54", "--version", V26], "'52:54' is not a MAC address"),
    (["--mac", MAC, "--version", V26, "--mac", MAC, "--version", V27], "more than one entry"),
    (["--mac", MAC, "--version", V26, "--negotiated-from", "/nowhere"], "needs --iface"),
])
def test_metadata_bad_input(cli: Hook, argv: list[str], fragment: str) -> None:
    result = cli("libvirt-xml", "--metadata", *argv)
    assert (result.status, result.stdout) == (2, "")
    assert_one_line(result.stderr, fragment)


# --- libvirt-hook ----------------------------------------------------------------------

def test_hook_admits_and_writes(cli: Hook, new_host: str) -> None:
    xml = domain_xml(InterfaceMetadata(MAC, V27, "vhu0"))
    result = cli("libvirt-hook", "--db", new_host, "--", "vm1", "migrate", "begin", "-",
                 stdin=xml)
    assert (result.status, result.stdout, result.stderr) == (0, "", "")
    assert run_bounded(open_host(new_host).read()).interface("vhu0").version == V27


def test_hook_refusal_is_exit_1_with_one_line(cli: Hook, old_host: str) -> None:
    before = snapshot(Path(old_host))
    result = cli("libvirt-hook", "--db", old_host, "vm1", "prepare", "begin", "-",
                 stdin=domain_xml(InterfaceMetadata(MAC, V27, "vhu0")))
    assert (result.status, result.stdout) == (1, "")
    assert_one_line(result.stderr, "vhostcompat: domain vm1 cannot run on host",
                    "VIRTIO_RING_F_INDIRECT_DESC")
    assert snapshot(Path(old_host)) == before


@pytest.mark.parametrize(("arguments", "stdin", "fragment"), [
    (["vm1", "prepare", "begin"], b"", "got 3"),
    (["vm1", "prepare", "begin", "-", "x"], b"", "got 5"),
    (["vm1", "explode", "begin", "-"], b"", "unknown hook operation 'explode'"),
    (["vm1", "prepare", "begin", "-"], b"<domain>", "not well-formed"),
    (["vm1", "prepare", "begin", "-"], b"", "empty input"),
    (["vm2", "prepare", "begin", "-"], domain_xml(InterfaceMetadata(MAC, V26)),
     "called for domain 'vm2' with the XML of domain 'vm1'"),
    (["vm1", "prepare", "begin", "-"],
     b'<!DOCTYPE d [<!ENTITY x "y">]><domain><name>&x;</name></domain>',
     "document type declaration"),
])
def test_hook_bad_input_is_exit_2_and_writes_nothing(
        cli: Hook, old_host: str, arguments: list[str], stdin: bytes, fragment: str) -> None:
    before = snapshot(Path(old_host))
    result = cli("libvirt-hook", "--db", old_host, "--", *arguments, stdin=stdin)
    assert (result.status, result.stdout) == (2, "")
    assert_one_line(result.stderr, fragment)
    assert snapshot(Path(old_host)) == before


def test_hook_passes_other_operations_without_reading(cli: Hook, tmp_path: Path) -> None:
    # Not even the store is read: a call that checks nothing costs nothing.
    result = cli("libvirt-hook", "--db", str(tmp_path / "nowhere"), "vm1", "started",
                 "begin", "-", stdin=b"not xml at all")
    assert (result.status, result.stdout, result.stderr) == (0, "", "")


def test_hook_on_a_missing_store_is_exit_2(cli: Hook, tmp_path: Path) -> None:
    result = cli("libvirt-hook", "--db", str(tmp_path / "nowhere"), "vm1", "prepare",
                 "begin", "-", stdin=domain_xml(InterfaceMetadata(MAC, V26)))
    assert result.status == 2
    assert_one_line(result.stderr, "no such host store")


# --- the installed script, run as libvirt runs it ---------------------------------------

def run_script(script: Path, *arguments: str, stdin: bytes) -> subprocess.CompletedProcess[
        bytes]:
    """As libvirtd runs a hook: argv, the XML on stdin, only LC_ALL, HOME and PATH."""
    environment = {"LC_ALL": "C", "HOME": "/", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run([str(script), *arguments], input=stdin, capture_output=True,
                          env=environment, timeout=60, check=False)


def test_install_writes_an_executable_script_that_libvirt_can_run(
        cli: Hook, old_host: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks" / "qemu.d"
    result = cli("libvirt-hook", "--install", "--db", old_host, "--hooks-dir", str(hooks))
    assert result.status == 0, result.stderr
    script = hooks / HOOK_SCRIPT_NAME
    assert result.stdout.strip() == str(script)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert sorted(os.listdir(hooks)) == [HOOK_SCRIPT_NAME]  # no temporary left
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/sh" and lines[1].startswith("exec ") and len(lines) == 2

    refused = run_script(script, "vm-x", "prepare", "begin", "-",
                         stdin=domain_xml(InterfaceMetadata(MAC, V27, "vhu0"), name="vm-x"))
    assert refused.returncode == 1
    assert refused.stdout == b""
    assert refused.stderr.decode().startswith("vhostcompat: domain vm-x cannot run on host")
    admitted = run_script(script, "vm-y", "migrate", "begin", "-",
                          stdin=domain_xml(InterfaceMetadata(MAC, V26, "vhu0"), name="vm-y"))
    assert (admitted.returncode, admitted.stdout, admitted.stderr) == (0, b"", b"")
    assert run_script(script, "vm-y", "bogus", "-", "-", stdin=b"").returncode == 2


def test_install_replaces_an_older_script(cli: Hook, old_host: str, new_host: str,
                                          tmp_path: Path) -> None:
    install = functools.partial(cli, "libvirt-hook", "--install", "--hooks-dir",
                                str(tmp_path))
    assert install("--db", old_host).status == 0
    assert install("--db", new_host).status == 0
    assert new_host in (tmp_path / HOOK_SCRIPT_NAME).read_text()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--install", "--db", "/h", "vm1", "prepare", "begin", "-"], "takes no hook arguments"),
    (["--db", "/h", "--hooks-dir", "/d", "vm1", "prepare", "begin", "-"],
     "--hooks-dir goes with --install"),
    (["--install", "--db", "", "--hooks-dir", "/d"], "empty host address"),
])
def test_install_bad_input(cli: Hook, argv: list[str], fragment: str) -> None:
    result = cli("libvirt-hook", *argv)
    assert result.status == 2
    assert_one_line(result.stderr, fragment)


def test_install_makes_a_relative_store_path_absolute(
        cli: Hook, old_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(old_host).parent)
    assert cli("libvirt-hook", "--install", "--db", Path(old_host).name, "--hooks-dir",
               str(tmp_path / "d")).status == 0
    assert f"--db {old_host} " in (tmp_path / "d" / HOOK_SCRIPT_NAME).read_text()
