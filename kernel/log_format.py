"""The daemon's log lines: ``text`` for people, ``json`` for collectors.

``text`` is ``TIME LEVEL MESSAGE``, one line per record (what a driver sent
is escaped where it is logged, so it cannot pass for a line of ours).
``json`` is one JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message``, ``exception`` when there is a traceback, and the
fields of ``FIELDS`` that the record carries (``extra=`` at the call site,
``slot_fields`` for a driver version). Non-ASCII and control characters are
``\\u`` escapes, so a line holds no raw control character whatever a driver
wrote.

The handler drivebayd installs is the one a reload re-formats
(``use_format``), so tests that run the kernel in-process keep theirs.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
# What a record may carry about its subject, in the order they are written.
FIELDS = ("driver", "version", "resource", "event", "state", "operation")


def slot_fields(name: str, event: str, **more: str) -> dict[str, str]:
    """``extra=`` for a record about driver version ``name`` (``driver@version``)."""
    driver, _, version = name.partition("@")
    return {"driver": driver, "version": version, "event": event, **more}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                line[name] = value if isinstance(value, int | float) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=True, default=str)


class DaemonHandler(logging.StreamHandler[TextIO]):
    """The handler drivebayd installs on the root logger (``install``)."""


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


def install(level: str, kind: str, stream: TextIO) -> None:
    """The daemon's logging: every record at ``level`` or above to ``stream``."""
    handler = DaemonHandler(stream)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def use_format(kind: str) -> None:
    """A reload's new ``log_format``, for the handler ``install`` put in place."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, DaemonHandler):
            handler.setFormatter(formatter(kind))
