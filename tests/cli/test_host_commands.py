"""publish, versions and assign from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import V26, V27, Cli


def test_publish_and_versions(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("versions", *two_hosts)
    assert result.status == 0
    lines = result.stdout.splitlines()
    assert lines[1] == f"{two_hosts[1]}: {V26}"
    assert V27 in lines[0]
    document = json.loads(cli("versions", "--json", *two_hosts).stdout)
    assert document["hosts"][1] == {"host": two_hosts[1], "versions": [V26]}


def test_publish_json_and_catalog_option(cli: Cli, tmp_path: Path) -> None:
    catalog = tmp_path / "site.toml"
    catalog.write_text('[[profile]]\nversion = "site.v2"\nvirtio_features = []\n'
                       '[[profile]]\nversion = "site.v1"\nvirtio_features = []\n')
    result = cli("publish", "--json", "--db", str(tmp_path / "h"), "--catalog", str(catalog))
    assert result.status == 0
    assert json.loads(result.stdout)["versions"] == ["site.v2", "site.v1"]


def test_assign_reports_and_is_visible(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("assign", "--db", two_hosts[0], "--iface", "vhu0", "--version", V27)
    assert result.status == 0
    data = json.loads((Path(two_hosts[0]) / "vhostcompat-host.json").read_text())
    assert data["Interface"]["vhu0"]["options"]["vhost-compat-version"] == V27


def test_an_unreachable_ovsdb_address_is_one_line(cli: Cli) -> None:
    result = cli("versions", "unix:/nonexistent/db.sock")
    assert result.status == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot connect to OVSDB: unix:/nonexistent/db.sock: No such file" in result.stderr
