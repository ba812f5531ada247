"""matrix: domains are cliques (not components), and the SVG renders with a real renderer.

Hosts: a publishes test.small and test.tso, b test.big (which satisfies
small by content), c test.tso, d test.small: two domains that overlap in a
and neither contains the other; an unreachable host is drawn grey and is in
no domain. The picture is rendered by librsvg's
``rsvg-convert`` to PNG and its pixels are read back at each cell.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.conftest import Cli
from tests.helpers import require_tool
from tests.manager.helpers import BIG, SMALL, TSO, publish_modes, run, write_catalog
from tests.manager.png import read_png
from vhostcompat import manager
from vhostcompat.manager.svg import DIAGONAL_COLOUR, STATUS_COLOURS, cell_box, matrix_svg


def colour(hex_text: str) -> tuple[int, int, int]:
    value = int(hex_text[1:], 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def test_domains_are_groups_where_every_ordered_pair_works() -> None:
    """A<->B and B<->C do not make A<->C: two domains, not one component."""
    adjacent = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": set()}
    cliques = manager.maximal_cliques(["a", "b", "c", "d"], adjacent)
    assert sorted(sorted(clique) for clique in cliques) == [["a", "b"], ["b", "c"]]
    full = {name: {"w", "x", "y", "z"} - {name} for name in "wxyz"}
    assert manager.maximal_cliques("wxyz", full) == [frozenset("wxyz")]


def test_matrix_svg_renders_with_rsvg_convert(cli: Cli, tmp_path: Path) -> None:
    require_tool("rsvg-convert")
    catalog = write_catalog(tmp_path)
    names = {name: str(tmp_path / name) for name in ("a", "b", "c", "d")}
    run(publish_modes(catalog, {names["a"]: [SMALL, TSO], names["b"]: [BIG],
                                names["c"]: [TSO], names["d"]: [SMALL]}))
    gone = str(tmp_path / "gone")
    hosts = [*names.values(), gone]
    picture = tmp_path / "matrix.svg"
    result = cli("matrix", *hosts, "--svg", str(picture), "--json")
    assert result.status == 2  # one host could not be read
    document = json.loads(result.stdout)
    assert [(domain["hosts"], domain["versions"]) for domain in document["domains"]] == [
        ([names["a"], names["b"], names["d"]], [SMALL]), ([names["a"], names["c"]], [TSO])]
    assert document["unreachable"][0]["host"] == gone

    png = tmp_path / "matrix.png"
    subprocess.run(["rsvg-convert", "-o", str(png), str(picture)], check=True, timeout=30)
    image = read_png(png.read_bytes())
    report = run(manager.matrix(hosts))
    assert matrix_svg(report) == picture.read_text()
    width = int(picture.read_text().split("width='", 1)[1].split("'", 1)[0])
    assert image.width == width and image.height > 5 * 28
    expected = {(0, 1): "content", (3, 0): "yes", (1, 2): "no", (0, 4): "unreachable",
                (4, 0): "unreachable"}
    for (row, column), status in expected.items():
        assert report.cell(hosts[row], hosts[column]).symbol == status
        x, y, size, _ = cell_box(report, row, column)
        assert image.pixel(x + size // 2, y + size // 2) == colour(STATUS_COLOURS[status])
    x, y, size, _ = cell_box(report, 1, 1)
    assert image.pixel(x + size // 2, y + size // 2) == colour(DIAGONAL_COLOUR)
