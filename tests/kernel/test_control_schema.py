"""The control commands' one schema: drivebayctl's table and the Structs agree
field by field, docs/control-schema.json is what the Structs generate, a
malformed request is named by its field, and ``status`` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from drivebay.kernel.control import schema as control_schema
from drivebay.kernel.control.ctl_commands import BY_WIRE, COMMANDS, REQUIRED
from drivebay.kernel.control.schema import REQUESTS, RESULTS, BadRequest, decode_request
from drivebay.kernel.drivebayctl import build_parser, parse

ROOT = Path(__file__).resolve().parents[2]


def type_text(kind: msgspec.inspect.Type) -> str:
    """A field's type as the command table writes it."""
    if isinstance(kind, msgspec.inspect.Metadata):
        return type_text(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return " | ".join(type_text(member) for member in kind.types)
    if isinstance(kind, msgspec.inspect.ListType):
        return f"list[{type_text(kind.item_type)}]"
    simple = {
        msgspec.inspect.StrType: "str",
        msgspec.inspect.LiteralType: "str",
        msgspec.inspect.IntType: "int",
        msgspec.inspect.FloatType: "float",
        msgspec.inspect.BoolType: "bool",
        msgspec.inspect.DictType: "dict",
        msgspec.inspect.NoneType: "None",
    }
    return simple[type(kind)]


def default_of(field: msgspec.inspect.Field) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return REQUIRED if field.default is msgspec.NODEFAULT else field.default


def test_every_command_is_in_the_table_and_the_schema():
    assert set(BY_WIRE) == set(REQUESTS)
    assert len(BY_WIRE) == len(COMMANDS)
    assert set(RESULTS) == set(REQUESTS.values())


@pytest.mark.parametrize("command", sorted(REQUESTS))
def test_the_table_and_the_request_struct_agree_field_by_field(command):
    info = msgspec.inspect.type_info(REQUESTS[command])
    assert isinstance(info, msgspec.inspect.StructType)
    struct = [(f.encode_name, type_text(f.type), default_of(f)) for f in info.fields]
    table = [(f.name, f.type, f.default) for f in BY_WIRE[command].fields]
    assert table == struct


def test_the_schema_file_is_fresh():
    """Fails when a command changed and docs/control-schema.json was not
    regenerated (scripts/gen_control_schema.py)."""
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_control_schema.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_schema_names_every_request_and_result():
    schema = control_schema.json_schema()
    assert set(schema["requests"]) == set(schema["results"]) == set(REQUESTS)
    call = schema["$defs"]["CallRequest"]["properties"]
    assert call["timeout"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert schema["envelope"]["reply"]["$ref"] == "#/$defs/Reply"


@pytest.mark.parametrize(
    ("command", "args", "said"),
    [
        ("describe", {}, "missing required field `name`"),
        ("tail", {"name": "a", "lines": "many"}, "lines must be a number of lines (0 or more)"),
        ("tail", {"name": "a", "lines": -1}, "lines must be a number of lines"),
        ("tail", {"name": "a", "stream": "stdin"}, "stream must be stdout or stderr"),
        ("status", {"names": "alpha"}, "names must be driver names"),
        ("status", {"nmes": []}, "unknown field `nmes`"),
        ("call", {"resource": "r", "op": 7}, "op must be a string"),
        ("call", {"resource": "r", "op": "x", "timeout": 0}, "timeout must be a number of"),
        ("resource-add", {"id": "r"}, "missing required field `driver`"),
        ("frobnicate", {}, "unknown command 'frobnicate' (known: avail, call,"),
    ],
)
def test_a_malformed_request_is_a_client_error_naming_the_field(command, args, said):
    with pytest.raises(BadRequest) as caught:
        decode_request(command, args)
    assert said in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_request_decodes_into_its_struct():
    request = decode_request("call", {"resource": "r", "op": "echo", "timeout": 2})
    assert request == control_schema.CallRequest("r", "echo", {}, 2.0)
    assert decode_request("status", {}) == control_schema.StatusRequest([])


def test_every_command_that_prints_takes_json():
    parser = build_parser()
    for command in COMMANDS:
        if not command.words:
            continue
        sub = parser
        for word in command.words:
            sub = next(
                action.choices[word]  # type: ignore[index]
                for action in sub._actions
                if action.choices and word in action.choices  # type: ignore[operator]
            )
        options = {opt for action in sub._actions for opt in action.option_strings}
        assert ("--json" in options) == (command.render is not None), command.wire
    assert parse(["call", "r", "op", "a=1", "--json"]).json is True
    assert parse(["stop", "all", "--json"]).json is True
    assert parse(["reload", "--json"]).json is True


def test_status_imports_neither_msgspec_nor_asyncio(tmp_path):
    """``drivebayctl status`` stays fast: the command table and its client
    import neither (msgspec costs ~30 ms, asyncio ~15 ms)."""
    probe = (
        "import sys\n"
        "from drivebay.kernel.drivebayctl import main\n"
        f"code = main(['-s', {str(tmp_path / 'none.sock')!r}, 'status'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('msgspec', 'asyncio'))\n"
        "print(code, heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env
    )
    assert ran.stdout.strip() == "4 []", (ran.stdout, ran.stderr)
    assert "drivebayd is not running" in ran.stderr


def test_every_request_has_one_handler():
    from drivebay.kernel.control.handlers import HANDLERS, STREAMS

    assert set(HANDLERS) | set(STREAMS) == set(REQUESTS.values())
    assert not set(HANDLERS) & set(STREAMS)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "a", "b@1.0.0", "--json"],
        ["start", "all"],
        ["stop", "a", "--json"],
        ["restart", "a"],
        ["tail", "-n", "5", "a", "stderr"],
        ["tail", "-f", "a"],
        ["describe", "a"],
        ["avail"],
        ["pid"],
        ["pid", "a"],
        ["version"],
        ["resources"],
        ["resource", "add", "r", "--driver", "d", "--version", "1.0", "k=v", "n:=3"],
        ["resource", "set", "r", "k=v"],
        ["resource", "rm", "r"],
        ["resource", "pin", "r", "1.0"],
        ["resource", "pin", "r", "--unpin"],
        ["call", "r", "op", "a=1", "b:=[1]", "--timeout", "2.5", "--json"],
        ["events"],
        ["events", "-f", "--since", "5f0c9a1e-17", "-n", "3", "--json"],
        ["status", "--watch"],
        ["reload"],
        ["shutdown"],
    ],
)
def test_what_drivebayctl_sends_is_what_the_daemon_decodes(argv):
    from drivebay.kernel.drivebayctl import request_args

    wire, payload = request_args(parse(argv))
    decoded = msgspec.to_builtins(decode_request(wire, payload))
    assert decoded["command"] == wire
    assert {key: decoded[key] for key in payload} == payload
