"""The daemon's JSON log lines: fields, escaping, tracebacks; a reload's new format."""

from __future__ import annotations

import io
import json
import logging
import sys

from drivebay.kernel.log_format import (
    DaemonHandler,
    JsonFormatter,
    install,
    slot_fields,
    use_format,
)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("drivebay.actor", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_record_about_a_driver_carries_its_fields():
    line = JsonFormatter().format(
        record(
            "%s: %s raised",
            "mis@1.0.0",
            "fail",
            **slot_fields("mis@1.0.0", "operation_failed", resource="v1", operation="fail"),
        )
    )
    assert "\n" not in line
    fields = json.loads(line)
    assert fields.pop("time").endswith("+00:00")
    assert fields == {
        "level": "WARNING",
        "logger": "drivebay.actor",
        "message": "mis@1.0.0: fail raised",
        "driver": "mis",
        "version": "1.0.0",
        "resource": "v1",
        "event": "operation_failed",
        "operation": "fail",
    }


def test_control_characters_and_non_ascii_are_escaped():
    line = JsonFormatter().format(record("%s", "a\x1b[2J\nb\x9b\u202e", resource="v\x07"))
    assert line.isascii() and line.isprintable()
    fields = json.loads(line)
    assert (fields["message"], fields["resource"]) == ("a\x1b[2J\nb\x9b\u202e", "v\x07")


def test_a_traceback_is_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        made.exc_info = sys.exc_info()
    fields = json.loads(JsonFormatter().format(made))
    assert fields["message"] == "failed"
    assert fields["exception"].startswith("Traceback") and "ValueError: boom" in fields["exception"]


def test_a_reload_switches_the_daemon_s_handler_only():
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    others = list(root.handlers)
    install("INFO", "text", stream)
    try:
        ours = [h for h in root.handlers if isinstance(h, DaemonHandler)]
        assert len(ours) == 1
        logging.getLogger("drivebay.test").info("as text")
        use_format("json")
        logging.getLogger("drivebay.test").info("as json", extra={"driver": "d"})
        assert all(h.formatter is not ours[0].formatter for h in others)
    finally:
        for handler in root.handlers[:]:
            if isinstance(handler, DaemonHandler):
                root.removeHandler(handler)
        root.setLevel(level)
    text, as_json = stream.getvalue().splitlines()
    assert text.endswith("INFO    as text")
    assert json.loads(as_json)["driver"] == "d"
