"""drivebayctl's human rendering: every string from a bundle or a driver is
shown with its control characters escaped; JSON and piped tails stay exact."""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

import pytest

from drivebay.client import Reply
from drivebay.kernel import drivebayctl as ctl_cli
from drivebay.kernel.control import ctl_render

EVIL = "x\x1b[2J\x1b]0;title\x07\x9b1m\r\u202eend\n"
CONTROL = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


def clean(text: str) -> bool:
    return not any(c in text for c in CONTROL)


def status_rows() -> list[dict[str, Any]]:
    running = {
        "name": "drv" + EVIL,
        "version": "1.0" + EVIL,
        "state": "RUNNING",
        "pid": 12,
        "uptime_s": 3.0,
        "resources": 1,
        "message": EVIL,
    }
    invalid = {**running, "version": None, "state": "INVALID", "message": "bad" + EVIL}
    return [running, invalid]


def describe_info() -> dict[str, Any]:
    return {
        **status_rows()[0],
        "description": EVIL,
        "category": EVIL,
        "entrypoint": EVIL,
        "restarts": 0,
        "codec": EVIL,
        "loop": EVIL,
        "bundle": "/drop/" + EVIL,
        "stored_at": "/state/" + EVIL,
        "env_key": EVIL,
        "requires": [EVIL],
        "dependencies": [EVIL],
        "idempotent": [EVIL],
        "operations": [EVIL],
        "limits": {EVIL: EVIL},
        "logs": {"stdout": "/logs/" + EVIL},
        "properties": [
            {
                "key": EVIL,
                "type": EVIL,
                "required": True,
                "label_text": EVIL,
                "description_text": EVIL,
            }
        ],
        "history": [{"at": time.time(), "from": "STOPPED", "to": "STARTING", "reason": EVIL}],
    }


CASES: list[tuple[str, Any]] = [
    ("status", status_rows()),
    ("start", [{"name": EVIL, "ok": False, "message": EVIL}]),
    ("describe", describe_info()),
    ("avail", [{"file": EVIL, "name": EVIL, "version": EVIL, "verdict": "x", "message": EVIL}]),
    ("avail", [{"file": EVIL, "name": None, "version": None, "verdict": "x", "message": EVIL}]),
    ("version", {"version": EVIL, "protocol": [1, 2]}),
    ("pid", EVIL),
    ("resources", [{"id": EVIL, "driver": EVIL, "version": EVIL, "pinned": EVIL, "state": EVIL}]),
    ("resource", {"id": EVIL, "driver": EVIL, "pinned": EVIL, "properties": {}}),
    ("resource", {"id": EVIL, "pinned": EVIL}),
    ("resource", {"id": EVIL, "removed": True}),
    ("resource", {"id": EVIL, "properties": {}}),
    ("call", {"text": EVIL}),
    ("reload", {"changed_drivers": [EVIL]}),
    ("unknown", EVIL),
]


@pytest.mark.parametrize(("command", "result"), CASES)
def test_human_output_escapes_control_characters(command, result, capsys):
    ctl_cli.print_human(command, result)
    out = capsys.readouterr().out
    assert out and clean(out), out
    assert "\\x1b[2J" in out or "\\u001b[2J" in out  # still shown, escaped


def test_status_columns_stay_aligned_with_escaped_names(capsys):
    rows = status_rows()
    ctl_cli.print_status(rows)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].index("RUNNING") == lines[1].index("INVALID")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tail_is_escaped_on_a_terminal_and_exact_in_a_pipe(monkeypatch, capsys):
    log = "one\x1b[2J\n" + EVIL
    ctl_cli.print_human("tail", log)
    assert capsys.readouterr().out == log  # a pipe: the driver's bytes
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    ctl_cli.print_human("tail", log)
    shown = terminal.getvalue()
    assert clean(shown)
    assert shown.splitlines()[0] == "one\\x1b[2J"
    assert shown.count("\n") == log.count("\n")  # lines stay lines


def test_an_error_line_is_escaped(capsys):
    class Replies:
        def replies(self, command: str, args: dict[str, Any]) -> list[Reply]:
            return [Reply({"ok": False, "error": "TypeError: " + EVIL, "code": 1})]

    args = type("Args", (), {"command": "call", "json": False})()
    assert ctl_cli.run(Replies(), "call", {}, args) == 1  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.startswith("error: TypeError: x\\x1b[2J") and clean(err)
    assert err.count("\n") == EVIL.count("\n") + 1  # lines stay lines (some errors have several)


def test_json_is_exact(capsys):
    class Replies:
        def replies(self, command: str, args: dict[str, Any]) -> list[Reply]:
            return [Reply({"ok": True, "result": status_rows(), "code": 0})]

    args = type("Args", (), {"command": "status", "json": True})()
    ctl_cli.run(Replies(), "status", {}, args)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert json.loads(out) == status_rows() and clean(out)


def test_describe_shows_each_operation_with_its_signature_and_summary(capsys):
    info = describe_info()
    info["operations"] = ["resize", "wait_gate"]
    info["operation_details"] = [
        {
            "name": "resize",
            "signature": "(name: str) -> dict",
            "summary": "Grow it.",
            "async": True,
        },
        {"name": "wait_gate", "signature": "(seconds: float)", "summary": "", "async": False},
        {"name": EVIL, "signature": EVIL, "summary": EVIL, "async": False},
    ]
    ctl_render.print_describe(info)
    out = capsys.readouterr().out
    assert clean(out)
    lines = out.splitlines()
    start = lines.index("  operations:")
    assert lines[start + 1 : start + 4] == [
        "    async resize(name: str) -> dict",
        "        Grow it.",
        "    wait_gate(seconds: float)",
    ]


def test_repository_output_is_escaped_and_says_what_is_installed(capsys):
    offered = {"file": "demo/demo-1.1.0.zip", "name": "demo", "version": "1.1.0"}
    rows = [
        {"file": "demo-1.0.0.zip", "name": "demo", "version": "1.0.0", "verdict": "active"}
        | {"message": "a driver", "source": "drivers-dir", "installed": True}
        | {"update_available": True},
        offered | {"verdict": "offered", "message": EVIL, "source": EVIL, "installed": False},
        offered | {"verdict": "offered", "message": "", "source": "acme", "installed": True},
    ]
    ctl_render.print_avail(rows)
    ctl_render.print_repos([{"name": EVIL, "url": EVIL, "kept": True, "offers": 2}])
    ctl_render.print_installed(
        {"name": "demo", "version": "1.1.0", "repo": EVIL, "file": EVIL, "state": "RUNNING"}
    )
    lines = capsys.readouterr().out.splitlines()
    assert all(clean(line) for line in lines), lines
    assert "(update available) a driver" in lines[0]
    assert " offered " in lines[1] and "update" not in lines[1]
    assert lines[2].split()[2:4] == ["acme", "installed"]
    assert " kept " in lines[3] and lines[3].endswith("  2 bundles")
    assert lines[-1].startswith("demo@1.1.0: installed from ")
