"""Bad input: one line on stderr, exit 2, nothing changed on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import V26, Cli, snapshot

CATALOGS = {
    "malformed TOML": "[[profile]\nversion = ",
    "unknown feature name": '[[profile]]\nversion = "v"\nvirtio_features = ["VIRTIO_F_WARP"]\n',
    "unknown protocol name": ('[[profile]]\nversion = "v"\nvirtio_features = []\n'
                              'protocol_features = ["TELEPORT"]\n'),
    "empty catalog": "",
    "wrong type": '[[profile]]\nversion = "v"\nvirtio_features = []\nmax_queue_pairs = "2"\n',
    "unknown key": '[[profile]]\nversion = "v"\nvirtio_features = []\nmtu = 1500\n',
    "duplicate version": ('[[profile]]\nversion = "v"\nvirtio_features = []\n'
                          '[[profile]]\nversion = "v"\nvirtio_features = []\n'),
}


def assert_one_line_error(result_stderr: str, *fragments: str) -> None:
    lines = result_stderr.splitlines()
    assert len(lines) == 1, result_stderr
    assert "Traceback" not in result_stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("label", sorted(CATALOGS))
def test_bad_catalog_refused_before_anything_is_written(
        cli: Cli, two_hosts: tuple[str, str], tmp_path: Path, label: str) -> None:
    catalog = tmp_path / "bad.toml"
    catalog.write_text(CATALOGS[label])
    before = snapshot(tmp_path)
    for argv in (["publish", "--db", two_hosts[1], "--catalog", str(catalog)],
                 ["publish", "--db", str(tmp_path / "new-host"), "--catalog", str(catalog)],
                 ["profiles", "--catalog", str(catalog)]):
        result = cli(*argv)
        assert result.status == 2
        assert result.stdout == ""
        assert_one_line_error(result.stderr, "bad.toml")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "new-host").exists()


def test_empty_catalog_directory(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty.d").mkdir()
    result = cli("profiles", "--catalog", str(tmp_path / "empty.d"))
    assert result.status == 2
    assert_one_line_error(result.stderr, "no *.toml catalog files")


def test_unknown_version_names(cli: Cli, two_hosts: tuple[str, str], tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    for argv in (["profile", "show", "nope"], ["qemu-args", "--profile", "nope"],
                 ["publish", "--db", two_hosts[0], "--only", "nope"],
                 ["assign", "--db", two_hosts[1], "--iface", "vhu0", "--version", "nope"]):
        result = cli(*argv)
        assert result.status == 2, argv
        assert_one_line_error(result.stderr, "nope")
    assert snapshot(tmp_path) == before


def test_missing_host_paths(cli: Cli, two_hosts: tuple[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing-host")
    before = snapshot(tmp_path)
    for argv in (["versions", missing], ["select", two_hosts[0], missing],
                 ["assign", "--db", missing, "--iface", "vhu0", "--version", V26],
                 ["check-migration", "--iface", "vhu0", "--from", missing, "--to",
                  two_hosts[0]],
                 ["matrix", two_hosts[0], missing, "--version", V26]):
        result = cli(*argv)
        assert result.status == 2, argv
        assert_one_line_error(result.stderr, f"host {missing}: no such host store",
                              "vhostcompat publish")
    assert snapshot(tmp_path) == before
    assert not Path(missing).exists()


@pytest.mark.parametrize("content", ["{ torn", "[]", '{"Open_vSwitch": {"external_ids": {'
                                     '"vhost-compat-versions": "a,,b c"}}, "Interface": {}}'])
def test_corrupted_host_file(cli: Cli, two_hosts: tuple[str, str], tmp_path: Path,
                             content: str) -> None:
    host_file = Path(two_hosts[1]) / "vhostcompat-host.json"
    host_file.write_text(content)
    before = snapshot(tmp_path)
    for argv in (["versions", two_hosts[1]], ["select", *two_hosts],
                 ["assign", "--db", two_hosts[1], "--iface", "vhu0", "--version", V26],
                 ["publish", "--db", two_hosts[1]]):
        result = cli(*argv)
        assert result.status == 2, argv
        assert_one_line_error(result.stderr, "corrupt store")
    assert snapshot(tmp_path) == before


def test_usage_errors_exit_2(cli: Cli) -> None:
    for argv in ([], ["select"], ["matrix", "h"], ["check-migration", "--iface", "x"],
                 ["profile"], ["no-such-command"]):
        result = cli(*argv)
        assert result.status == 2, argv
        assert "Traceback" not in result.stderr
