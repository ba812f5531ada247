"""Files, sockets and the CLI's error boundary against a hostile local user.

Planted symbolic links at the names the commands write through, a umask of
000, and input files built to break parsers (deep nesting, 5,000-digit
numbers, FIFOs, unreadable directories): nothing is written outside its
place, sockets get their documented mode, and every bad input is one line
on stderr with exit 2, never a traceback and never a hang.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backend.helpers import Frontend, run
from tests.cli.test_bad_input import assert_one_line_error
from tests.helpers import require_tool, run_cli
from tests.security.helpers import BACKEND_OPTIONS, proxied, qemu_start_up, reference_backend
from vhostcompat.lab.commands import run_reference_backend

pytestmark = pytest.mark.timeout(60)
COMMAND_TIMEOUT = 30.0
PRECIOUS = "precious, not to be overwritten\n"
DEEP = 100_000


def _cli(*argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``vhostcompat ARGS`` as a child process, bounded (a hang is a failure)."""
    return subprocess.run([*prefix, sys.executable, "-m", "vhostcompat.cli", *argv],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          check=False)


def _victim(directory: Path) -> Path:
    victim = directory / "victim"
    victim.write_text(PRECIOUS)
    return victim


def test_a_planted_link_at_the_status_files_old_temporary_name_is_never_followed(
        short_dir: Path) -> None:
    async def scenario() -> None:
        async with proxied(short_dir) as (proxy, _backend):
            status = proxy.config.status_file
            victim = _victim(short_dir)
            # The name the proxy used to write through: .NAME.PID.tmp.
            planted = status.with_name(f".{status.name}.{proxy.process.pid}.tmp")
            planted.symlink_to(victim)
            qemu = await Frontend.open(Path(proxy.config.frontend))
            await qemu_start_up(qemu)
            qemu.close()
            await proxy.wait_for(lambda status: status.connections >= 1, 20,
                                 "a status written after the link was planted")
            assert victim.read_text() == PRECIOUS
            assert stat.S_ISREG(os.lstat(status).st_mode)
            assert planted.is_symlink()
            leftovers = [path.name for path in short_dir.iterdir()
                         if path.name.startswith(f".{status.name}.") and path != planted]
            assert leftovers == []

    run(scenario, timeout=40)


def test_a_planted_link_at_the_ready_files_old_partial_name_is_never_followed(
        short_dir: Path) -> None:
    victim = _victim(short_dir)
    (short_dir / "backend.ready.partial").symlink_to(victim)

    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            ready = short_dir / "backend.ready"
            assert ready.read_text() == f"{backend.socket_path}\n"
            assert stat.S_ISREG(os.lstat(ready).st_mode)

    run(scenario, timeout=30)
    assert victim.read_text() == PRECIOUS


@pytest.mark.parametrize("options, mode, group", [
    ((), 0o660, None),
    (("--socket-mode", "0600", "--socket-group", "4242"), 0o600, 4242),
], ids=["default", "given"])
def test_socket_modes_do_not_depend_on_the_umask(short_dir: Path, options: tuple[str, ...],
                                                 mode: int, group: int | None) -> None:
    async def scenario() -> None:
        previous = os.umask(0)  # the children inherit it: the worst case
        try:
            started = run_reference_backend(short_dir, "backend", [*BACKEND_OPTIONS, *options])
            backend = await started.__aenter__()
        finally:
            os.umask(previous)
        try:
            status = os.stat(backend.socket_path)
            assert stat.S_IMODE(status.st_mode) == mode
            if group is not None:
                assert status.st_gid == group
            assert [path.name for path in short_dir.iterdir() if path.name.startswith(".v")] \
                == []  # no staging directory left behind
        finally:
            await started.__aexit__(None, None, None)

    run(scenario, timeout=30)


def test_the_proxys_sockets_do_not_depend_on_the_umask(short_dir: Path) -> None:
    async def scenario() -> None:
        previous = os.umask(0)
        try:
            started = proxied(short_dir)
            proxy, _backend = await started.__aenter__()
        finally:
            os.umask(previous)
        try:
            assert stat.S_IMODE(os.stat(proxy.config.frontend).st_mode) == 0o660
        finally:
            await started.__aexit__(None, None, None)

    run(scenario, timeout=30)


HOSTILE_FILES = {
    "status file, deeply nested JSON": ("proxy-status", "[" * DEEP + "]" * DEEP,
                                        "nested too deeply"),
    "status file, a 5,000-digit number": (
        "proxy-status", '{"state": "running", "connections": ' + "9" * 5000 + "}",
        "not usable JSON"),
    "status file, a count holding a superscript": (
        "proxy-status", '{"state": "running", "profile": "p", "features": {}, '
        '"protocol_features": {}, "queue_num": {}, "ring_sizes": {"\u00b2": 256}}',
        "ring indices"),
    "catalog, deeply nested arrays": (
        "profiles --catalog", '[[profile]]\nversion = "v"\nvirtio_features = '
        + "[" * DEEP + "]" * DEEP + "\n", "nested too deeply"),
    "catalog, a 5,000-digit integer": (
        "profiles --catalog", '[[profile]]\nversion = "v"\nvirtio_features = []\n'
        "max_queue_pairs = " + "9" * 5000 + "\n", "4300 digits"),
}


@pytest.mark.parametrize("label", sorted(HOSTILE_FILES))
def test_a_hostile_input_file_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, label: str) -> None:
    command, text, fragment = HOSTILE_FILES[label]
    path = tmp_path / "input"
    path.write_text(text)
    result = run_cli(capsys, *command.split(), str(path))
    assert result.status == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, str(path), fragment)


@pytest.mark.parametrize("command", ["profiles --catalog", "proxy-status"])
def test_a_fifo_given_as_an_input_file_never_hangs(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    result = _cli(*command.split(), str(fifo))
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, str(fifo), "not a regular file (a FIFO)")


def test_an_unreadable_catalog_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    require_tool("setpriv")
    directory = tmp_path / "catalog.d"
    directory.mkdir()
    (directory / "a.toml").write_text('[[profile]]\nversion = "v"\nvirtio_features = []\n')
    directory.chmod(0)
    # Root reads anything: drop the capabilities that let it.
    without_override = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                        "--inh-caps", "-dac_override,-dac_read_search", "--")
    try:
        result = _cli("profiles", "--catalog", str(directory), prefix=without_override)
    finally:
        directory.chmod(0o755)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, str(directory), "Permission denied")


def test_a_ready_file_in_a_missing_directory_is_refused_before_listening(
        capsys: pytest.CaptureFixture[str], short_dir: Path) -> None:
    ready = short_dir / "no-such-dir" / "backend.ready"
    result = run_cli(capsys, "backend", "--socket", str(short_dir / "b.sock"), "--features",
                     "VIRTIO_F_VERSION_1", "--ready-file", str(ready))
    assert result.status == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, str(ready), "does not exist")
    assert not (short_dir / "b.sock").exists()


def test_anything_unexpected_is_one_line_and_the_traceback_only_with_v(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(paths: object) -> None:
        raise RuntimeError("something no check foresaw\non two lines")

    monkeypatch.setattr("vhostcompat.profiles.load_catalog_or_default", broken)
    result = run_cli(capsys, "profiles")
    assert result.status == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, "internal error: RuntimeError: something no check "
                                         "foresaw on two lines", "-v")
    verbose = run_cli(capsys, "-v", "profiles")
    assert verbose.status == 2
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("vhostcompat: internal error: ")
