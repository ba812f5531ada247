"""The agent's structured log: one line per event, ``key=value`` or JSON.

``event(log, "proxy-started", iface="vhu0", mode="v1")`` logs one record
whose message is the event name and whose fields ride along; the
formatters render every record that way (records from other modules, such
as the proxy's, become ``event=log msg="..."``)::

    ts=2026-12-02T07:00:00.123Z level=info event=proxy-started iface=vhu0 mode=v1
    {"ts": "2026-12-02T07:00:00.123Z", "level": "info", "event": "proxy-started", ...}
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

FIELDS = "vhostcompat_fields"
_BARE = re.compile(r"[A-Za-z0-9_./:@,+-]+")


def event(logger: logging.Logger, name: str, level: int = logging.INFO,
          **fields: object) -> None:
    """Log event ``name`` with ``fields`` (None values are left out)."""
    logger.log(level, name, extra={FIELDS: fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
    }
    extra = getattr(record, FIELDS, None)
    if isinstance(extra, dict):
        base["event"] = record.getMessage()
        base.update({key: value for key, value in extra.items() if value is not None})
    else:
        base["event"] = "log"
        base["logger"] = record.name
        base["msg"] = record.getMessage()
    return base


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            parts.append(f"{key}={text}" if _BARE.fullmatch(text) else
                         f"{key}={json.dumps(text)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route every ``vhostcompat`` logger through one handler on stderr in that format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger("vhostcompat")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
