"""``drivebayctl``: the operator's client, in the manner of supervisorctl.

It resolves the same config as the daemon to find the control socket, sends
one request, prints the reply for humans (or as JSON with ``--json``), and
exits with supervisorctl's codes. What each command reads, sends and prints
is its entry in ``kernel/control/ctl_commands.py``. Imports are kept light (no
msgspec, no asyncio): ``status`` must answer in well under 100 ms.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from drivebay import __version__
from drivebay.client import (
    Client,
    ConnectionLost,
    DaemonUnavailable,
    NotDrivebayd,
    RequestError,
)
from drivebay.kernel.control.ctl_commands import (
    BY_WIRE,
    BY_WORDS,
    COMMANDS,
    GROUPS,
    Command,
    UsageError,
    command_of,
)
from drivebay.kernel.control.ctl_render import print_json, print_resource_change, say, shown_lines
from drivebay.kernel.control.ctl_render import (
    print_status as print_status,  # re-exported: how a status row reads
)
from drivebay.protocol.control_codes import EXIT_NO_SUCH, EXIT_USAGE

if TYPE_CHECKING:
    import argparse
    from typing import Any


GLOBAL_WITH_VALUE = ("-c", "--config", "-s", "--socket")


def requested_command(argv: list[str]) -> str | None:
    """The COMMAND word of ``argv`` (after global options), if any."""
    items = iter(argv)
    for item in items:
        if item in GLOBAL_WITH_VALUE:
            next(items, None)
        elif not item.startswith("-"):
            return item
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a known command, only that command's
    subparser is built (building all of them costs ~16 ms of ``status``)."""
    import argparse  # 14 ms: only for commands the fast path below does not take

    parser = argparse.ArgumentParser(prog="drivebayctl", description="Control a running drivebayd.")
    parser.add_argument("-c", "--config", help="config file, to find the daemon's socket")
    parser.add_argument("-s", "--socket", help="control socket path")
    parser.add_argument("--version", action="version", version=f"drivebayctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = requested_command(argv) if argv is not None else None
    known = {command.words[0] for command in COMMANDS if command.words}
    groups: dict[str, Any] = {}
    for command in COMMANDS:
        words = command.words
        if not words or (wanted in known and words[0] != wanted):
            continue
        if len(words) == 1:
            _add(sub, words[0], command)
            continue
        if words[0] not in groups:
            group = sub.add_parser(words[0], help=GROUPS[words[0]])
            groups[words[0]] = group.add_subparsers(dest="verb", metavar="VERB", required=True)
        _add(groups[words[0]], words[1], command)
    return parser


def _add(sub: Any, word: str, command: Command) -> None:
    parser = sub.add_parser(word, help=command.help)
    if command.render is not None:
        parser.add_argument("--json", action="store_true", help="print JSON")
    if command.arguments is not None:
        command.arguments(parser)


def socket_path(args: argparse.Namespace) -> str:
    """-s, else the socket ``control_socket`` finds from -c (as the daemon does)."""
    if args.socket:
        return str(args.socket)
    from drivebay.kernel.config_search import control_socket  # pathlib: not with -s

    return control_socket(args.config)


def request_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The request the parsed line makes: its command on the wire and fields."""
    return command_of(args).request(args)


def parse_plain_status(argv: list[str]) -> argparse.Namespace | None:
    """``[-s S | -c C]... status [--json] [NAME...]`` without importing argparse:
    the command monitoring runs most, whose start-up time is measured. Anything
    else (help, other options, errors) returns None and goes through argparse."""
    import types

    values: dict[str, str | None] = {"socket": None, "config": None}
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("-s", "--socket", "-c", "--config"):
        values["socket" if rest[0] in ("-s", "--socket") else "config"] = rest[1]
        rest = rest[2:]
    if not rest or rest[0] != "status":
        return None
    names = [item for item in rest[1:] if item != "--json"]
    if any(item.startswith("-") for item in names):
        return None
    namespace = types.SimpleNamespace(command="status", json="--json" in rest[1:], names=names)
    namespace.__dict__.update(values)
    return namespace  # type: ignore[return-value]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Assignments may follow options (``add ID --driver X a=1 b=2``), which
    argparse alone cannot mix with subcommands: collect them here."""
    argv = sys.argv[1:] if argv is None else argv
    plain = parse_plain_status(argv)
    if plain is not None:
        return plain
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "assignments") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.assignments = [*args.assignments, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        path = socket_path(args)
    except Exception as exc:  # a ConfigError: one line, no traceback
        print(f"drivebayctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        command, payload = request_args(args)
    except UsageError as exc:
        print(f"drivebayctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(path)
    try:
        return run(client, command, payload, args)
    except KeyboardInterrupt:
        return 0
    except RequestError as exc:  # a value the request cannot carry; checked before connecting
        print(f"drivebayctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_NO_SUCH
    except NotDrivebayd as exc:
        print(f"drivebayctl: {exc}; check -s or the config's socket", file=sys.stderr)
        return 1
    except ConnectionLost as exc:
        print(f"drivebayctl: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def run(client: Client, command: str, payload: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the replies to the request ``command`` (its name on the wire)."""
    as_json = getattr(args, "json", False)
    if as_json and command == "call":
        return run_call_json(client, payload)
    if command == "status" and getattr(args, "watch", False):
        from drivebay.kernel.control.ctl_watch import watch_status

        return watch_status(client.path, payload, as_json)
    render = BY_WIRE[command].render if command in BY_WIRE else None
    code = 0
    for reply in client.replies(command, payload):
        if not reply.ok:
            # An operation's own failure reads "error: TYPE: message" (callers
            # parse it); everything else is drivebayctl's own complaint.
            prefix = "error" if command == "call" else "drivebayctl"
            # Some are several lines by design (each bad property on its own).
            print(shown_lines(f"{prefix}: {reply.error or 'failed'}"), file=sys.stderr)
            if reply.traceback and getattr(args, "verbose", False):
                print(shown_lines(reply.traceback.rstrip("\n")), file=sys.stderr)
            return reply.code or 1
        code = reply.code
        if reply.result is None and not reply.more:
            continue
        if as_json:
            print(json_text(reply.result, indent=None if reply.more else 2))
        elif render is not None:
            render(reply.result)
        else:
            print_human(args.command, reply.result)
        if reply.more:
            sys.stdout.flush()  # a stream (tail -f, events -f) is read as it comes
    return code


def run_call_json(client: Client, payload: dict[str, Any]) -> int:
    """``call --json``: ``{"ok": true, "result": ...}``, or ``{"ok": false,
    "error": {"type", "message", "traceback"}}`` where ``type`` is the drivebay
    error's name (``OperationFailed``, ``CallTimeout``, ``NoSuchName``, ...)."""
    for reply in client.replies("call", payload):
        if reply.ok:
            print(json_text({"ok": True, "result": reply.result}, indent=2))
            return reply.code
        error = {"type": reply.error_type, "message": reply.error, "traceback": reply.traceback}
        print(json_text({"ok": False, "error": error}, indent=2))
        return reply.code or 1
    return 1


def json_text(value: Any, indent: int | None) -> str:
    import json

    return json.dumps(value, indent=indent, default=str)


def print_human(command: str, result: Any) -> None:
    """``result`` as the command line's ``command`` shows it to a human."""
    table = BY_WORDS.get((command,))
    if command == "resource":
        print_resource_change(result)
    elif table is not None and table.render is not None:
        table.render(result)
    elif isinstance(result, (dict, list)):
        print_json(result)
    else:
        say(str(result))


if __name__ == "__main__":
    sys.exit(main())
