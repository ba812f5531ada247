"""The matrix as a picture: an SVG document an operator opens in a browser.

Written by hand (no plotting library): a grid with one row per source and
one column per destination, each cell coloured by its status, the migration
domains as coloured marks beside the host names and listed below, and a
legend. Every host name and reason is escaped; sizes follow from the number
of hosts and the longest name, so :func:`cell_box` tells a test where each
cell is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhostcompat.manager.matrix import NOT_APPLICABLE, UNREACHABLE, MatrixReport


def escape(text: str) -> str:
    """Text for an SVG element's content (xml.sax.saxutils.escape, whose import pulls
    in urllib and email: a tenth of a command's start-up)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


CELL = 28
MARK = 10
CHARACTER = 7.2  # width of one 12 px monospace character, near enough
LINE = 18
MARGIN = 16
FONT = "font-family='DejaVu Sans Mono, monospace' font-size='12'"

STATUS_COLOURS = {
    "yes": "#2e9d48", "content": "#8fd18f", "guest": "#b5e3a1", "no": "#d9453d",
    NOT_APPLICABLE: "#e6e6e6", "unknown": "#f2c14e", UNREACHABLE: "#555555",
}
DIAGONAL_COLOUR = "#ffffff"
DOMAIN_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#8c564b",
                  "#bcbd22", "#7f7f7f")
LEGEND_TEXT = {
    "yes": "yes: publishes the version", "content": "content: satisfies it by content",
    "no": "no", NOT_APPLICABLE: "n/a: the source does not run it",
    "unknown": "unknown: contents known nowhere", UNREACHABLE: "unreachable",
}


@dataclass(frozen=True)
class Layout:
    """Where things are: the grid's top-left corner and the picture's size."""

    hosts: int
    label_width: int
    marks: int

    @property
    def grid_x(self) -> int:
        return MARGIN + self.label_width + self.marks * (MARK + 2) + 6

    @property
    def grid_y(self) -> int:
        return MARGIN + LINE + self.label_width + 6


def _layout(report: MatrixReport) -> Layout:
    longest = max((len(host) for host in report.hosts), default=1)
    return Layout(len(report.hosts), int(longest * CHARACTER) + 4,
                  min(len(report.domains), len(DOMAIN_COLOURS)))


def cell_box(report: MatrixReport, row: int, column: int) -> tuple[int, int, int, int]:
    """The (x, y, width, height) of a cell in the picture, for tests and tools."""
    layout = _layout(report)
    return (layout.grid_x + column * CELL, layout.grid_y + row * CELL, CELL, CELL)


def matrix_svg(report: MatrixReport) -> str:
    """The whole SVG document."""
    layout = _layout(report)
    size = len(report.hosts) * CELL
    parts: list[str] = []
    title = (f"VMs of {report.version}" if report.version else "VMs of any common version")
    parts.append(f"<text x='{MARGIN}' y='{MARGIN + 12}' {FONT} font-weight='bold'>"
                 f"{escape(title)}: row host to column host</text>")
    membership = {host: [index for index, domain in enumerate(report.domains)
                         if host in domain.hosts and index < len(DOMAIN_COLOURS)]
                  for host in report.hosts}
    for index, host in enumerate(report.hosts):
        y = layout.grid_y + index * CELL
        parts.append(f"<text x='{MARGIN + layout.label_width}' y='{y + CELL / 2 + 4:g}' "
                     f"{FONT} text-anchor='end'>{escape(host)}</text>")
        for domain in membership[host]:
            x = MARGIN + layout.label_width + 4 + domain * (MARK + 2)
            parts.append(f"<rect x='{x}' y='{y + (CELL - MARK) // 2}' width='{MARK}' "
                         f"height='{MARK}' fill='{DOMAIN_COLOURS[domain]}'/>")
        column_x = layout.grid_x + index * CELL + CELL / 2 + 4
        parts.append(f"<text x='{column_x:g}' y='{layout.grid_y - 6}' {FONT} transform='"
                     f"rotate(-90 {column_x:g} {layout.grid_y - 6})'>{escape(host)}</text>")
    for row, source in enumerate(report.hosts):
        for column, destination in enumerate(report.hosts):
            x, y, width, height = cell_box(report, row, column)
            if source == destination:
                parts.append(f"<rect x='{x}' y='{y}' width='{width}' height='{height}' "
                             f"fill='{DIAGONAL_COLOUR}' stroke='#999999'/>")
                continue
            cell = report.cell(source, destination)
            tooltip = f"{source} -> {destination}: {cell.symbol}"
            if cell.version:
                tooltip += f" ({cell.version})"
            parts.append(f"<rect x='{x}' y='{y}' width='{width}' height='{height}' "
                         f"fill='{STATUS_COLOURS[cell.symbol]}' stroke='#ffffff'>"
                         f"<title>{escape(tooltip)}</title></rect>")
    y = layout.grid_y + size + LINE
    for status, text in LEGEND_TEXT.items():
        parts.append(f"<rect x='{MARGIN}' y='{y - 11}' width='12' height='12' "
                     f"fill='{STATUS_COLOURS[status]}' stroke='#999999'/>")
        parts.append(f"<text x='{MARGIN + 18}' y='{y}' {FONT}>{escape(text)}</text>")
        y += LINE
    lines = [*report.summary_lines()[1:],
             *(f"unreachable: {failure.reason}" for failure in report.failures)]
    for index, line in enumerate(lines):
        if index < len(report.domains) and index < len(DOMAIN_COLOURS):
            parts.append(f"<rect x='{MARGIN}' y='{y - 11}' width='12' height='12' "
                         f"fill='{DOMAIN_COLOURS[index]}'/>")
        parts.append(f"<text x='{MARGIN + 18}' y='{y}' {FONT}>{escape(line)}</text>")
        y += LINE
    longest_text = max([len(title) + 26, *(len(line) + 3 for line in lines),
                        *(len(text) + 3 for text in LEGEND_TEXT.values())])
    width = max(layout.grid_x + size + MARGIN, int(MARGIN * 2 + longest_text * CHARACTER))
    height = y + MARGIN
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'>\n"
            f"<rect width='{width}' height='{height}' fill='#ffffff'/>\n"
            + "\n".join(parts) + "\n</svg>\n")
