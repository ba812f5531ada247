"""agent.log: one line per event, key=value or JSON, other modules' records included."""

from __future__ import annotations

import json
import logging

from vhostcompat.agent.log import FIELDS, JsonFormatter, KeyValueFormatter


def record(message: str, fields: dict[str, object] | None = None) -> logging.LogRecord:
    made = logging.LogRecord("vhostcompat.agent", logging.INFO, __file__, 1, message, None,
                             None)
    if fields is not None:
        setattr(made, FIELDS, fields)
    return made


def test_events_as_key_value_quote_what_needs_it() -> None:
    line = KeyValueFormatter().format(record("status", {
        "iface": "vhu0", "status": "refused: version v9 is not published", "none": None}))
    assert line.split(" ", 1)[1] == (
        'level=info event=status iface=vhu0 status="refused: version v9 is not published"')
    assert line.startswith("ts=") and line.split(" ", 1)[0].endswith("Z")


def test_events_and_plain_records_as_json() -> None:
    document = json.loads(JsonFormatter().format(record("proxy-started", {"iface": "vhu0"})))
    assert (document["event"], document["iface"], document["level"]) == (
        "proxy-started", "vhu0", "info")
    plain = json.loads(JsonFormatter().format(record("connected to %s")))
    assert (plain["event"], plain["logger"]) == ("log", "vhostcompat.agent")
