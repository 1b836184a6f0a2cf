"""``drivebayctl``: the operator's client, in the manner of supervisorctl.

It resolves the same config as the daemon to find the control socket, sends
one request, prints the reply for humans (or as JSON with ``--json``), and
exits with supervisorctl's codes. Imports are kept light: ``status`` must
answer in well under 100 ms.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kernel import __version__
from protocol.control_codes import EXIT_NO_SUCH, EXIT_USAGE
from protocol.errors import ProtocolError
from protocol.frames import HEADER, FrameSplitter
from protocol.msgpack_lite import MsgpackError, packb, unpackb
from sandbox.bundle_errors import shown

if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO


def _reading(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    command.add_argument("--json", action="store_true", help="print JSON")
    return command


def _status(sub: Any) -> None:
    status = _reading(sub, "status", "state of every driver version, or of NAME...")
    status.add_argument("names", nargs="*", metavar="NAME")


def _verb(verb: str) -> Callable[[Any], None]:
    def build(sub: Any) -> None:
        parser = sub.add_parser(verb, help=f"{verb} NAME... or all")
        parser.add_argument("names", nargs="+", metavar="NAME")

    return build


def _line_count(text: str) -> int:
    """argparse type of ``tail -n``: a whole number, 0 or more."""
    import argparse

    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a number of lines (0 or more), got {text!r}")
    return count


def _tail(sub: Any) -> None:
    tail = _reading(sub, "tail", "last lines of a driver's output")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    tail.add_argument("-n", "--lines", type=_line_count, default=20)
    tail.add_argument("name", metavar="NAME")
    tail.add_argument("stream", nargs="?", choices=["stdout", "stderr"], default="stdout")


def _named(name: str, help_text: str, optional: bool = False) -> Callable[[Any], None]:
    def build(sub: Any) -> None:
        parser = _reading(sub, name, help_text)
        parser.add_argument("name", nargs="?" if optional else None, metavar="NAME")

    return build


def _plain(name: str, help_text: str, reading: bool = False) -> Callable[[Any], None]:
    def build(sub: Any) -> None:
        if reading:
            _reading(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)

    return build


def _resource(sub: Any) -> None:
    resource = sub.add_parser("resource", help="add, set, rm or pin a resource")
    verbs = resource.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="add ID --driver NAME [--version V] [key=value...]")
    add.add_argument("id", metavar="ID")
    add.add_argument("--driver", required=True)
    add.add_argument("--version", help="pin this version")
    add.add_argument("assignments", nargs="*", metavar="key=value|key:=JSON")
    change = verbs.add_parser("set", help="set ID key=value...")
    change.add_argument("id", metavar="ID")
    change.add_argument("assignments", nargs="+", metavar="key=value|key:=JSON")
    verbs.add_parser("rm", help="rm ID").add_argument("id", metavar="ID")
    pin = verbs.add_parser("pin", help="pin ID VERSION, or pin ID --unpin")
    pin.add_argument("id", metavar="ID")
    pin.add_argument("version", nargs="?", metavar="VERSION")
    pin.add_argument("--unpin", action="store_true")


def _call(sub: Any) -> None:
    call = sub.add_parser("call", help="call RESOURCE OP [key=value...] [key:=JSON...]")
    call.add_argument("resource", metavar="RESOURCE")
    call.add_argument("op", metavar="OP")
    call.add_argument("assignments", nargs="*", metavar="key=value|key:=JSON")
    call.add_argument("--timeout", type=float, help="seconds the operation may take")
    call.add_argument(
        "-v", "--verbose", action="store_true", help="on failure, print the driver's traceback"
    )


COMMANDS: dict[str, Callable[[Any], None]] = {
    "status": _status,
    "start": _verb("start"),
    "stop": _verb("stop"),
    "restart": _verb("restart"),
    "tail": _tail,
    "describe": _named("describe", "everything about one driver"),
    "avail": _plain("avail", "every bundle in the drivers dir and its verdict", reading=True),
    "pid": _named("pid", "the daemon's pid, or a driver's", optional=True),
    "version": _plain("version", "the daemon's version", reading=True),
    "resources": _plain("resources", "every resource, its driver, version and state", True),
    "resource": _resource,
    "call": _call,
    "reload": _plain("reload", "re-read the config and rescan the drivers dir"),
    "shutdown": _plain("shutdown", "stop the daemon and all drivers"),
}
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
    for name, build in COMMANDS.items():
        if wanted not in COMMANDS or name == wanted:
            build(sub)
    return parser


class Reply:
    """A ``protocol.control.Reply`` read without msgspec (it costs 30 ms to import)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.ok = bool(fields.get("ok"))
        self.result = fields.get("result")
        self.error = str(fields.get("error", ""))
        self.code = int(fields.get("code", 0))
        self.more = bool(fields.get("more", False))
        self.traceback = str(fields.get("traceback", ""))


class Client:
    """One blocking connection to the control socket.

    Speaks ``protocol.control`` through the standard-library codec, which
    writes the same bytes as msgspec (as a driver child without msgspec does).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._frames = FrameSplitter("drivebayd")
        self._pending: list[Reply] = []

    def request(self, frame: bytes) -> Iterator[Reply]:
        """Send one request (see ``encode_request``) and yield its replies.

        Raises ProtocolError when the peer answers something that is not
        drivebayd's protocol (``-s`` names another program's socket)."""
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            # Refused at once (too many connections): its one line may be here.
            unsent: OSError | None = exc
        else:
            unsent = None
        while True:
            while self._pending:
                reply = self._pending.pop(0)
                yield reply
                if not reply.more:
                    return
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                if unsent is None:
                    raise
                data = b""
            if not data:
                raise unsent or ConnectionError("drivebayd closed the connection")
            try:
                self._pending.extend(Reply(unpackb(raw)) for raw in self._frames.feed(data))
            except (MsgpackError, AttributeError, TypeError, ValueError) as exc:
                raise ProtocolError(f"{self.path} does not answer as drivebayd: {exc}") from exc

    def close(self) -> None:
        self._sock.close()


def encode_request(command: str, args: dict[str, Any]) -> bytes:
    """The request as a frame; raises UsageError for a value MessagePack
    cannot carry (an int beyond 64 bits, say)."""
    try:
        payload = packb({"type": "request", "id": 1, "command": command, "args": args})
    except MsgpackError as exc:
        raise UsageError(f"cannot send that request: {exc}") from exc
    return HEADER.pack(len(payload)) + payload


def socket_path(args: argparse.Namespace) -> str:
    """-s, else the config's socket (the same file the daemon reads), else the default."""
    if args.socket:
        return str(args.socket)
    from kernel.config_search import find_config

    path = find_config(args.config)
    if path is None:
        from kernel.paths import DEFAULT_STATE_DIR, SOCKET_NAME

        return os.path.join(os.path.expanduser(DEFAULT_STATE_DIR), SOCKET_NAME)
    from kernel.config import load_config

    return str(load_config(path).socket_path)


def request_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command = args.command
    if command in ("status", "start", "stop", "restart"):
        return command, {"names": args.names}
    if command == "tail":
        name = "tail-follow" if args.follow else "tail"
        return name, {"name": args.name, "stream": args.stream, "lines": args.lines}
    if command == "describe":
        from kernel.messages_catalog import language_from_environment

        return command, {"name": args.name, "lang": language_from_environment(os.environ)}
    if command == "pid":
        return command, {"name": args.name}
    if command == "resource":
        verb = args.verb
        if verb == "add":
            return "resource-add", {
                "id": args.id,
                "driver": args.driver,
                "version": args.version,
                "assignments": args.assignments,
            }
        if verb == "set":
            return "resource-set", {"id": args.id, "assignments": args.assignments}
        if verb == "pin":
            if args.unpin == bool(args.version):
                raise UsageError("give either VERSION or --unpin")
            return "resource-pin", {"id": args.id, "version": None if args.unpin else args.version}
        return "resource-rm", {"id": args.id}
    if command == "call":
        payload: dict[str, Any] = {
            "resource": args.resource,
            "op": args.op,
            "args": call_arguments(args.assignments),
        }
        if args.timeout is not None:
            payload["timeout"] = args.timeout
        return "call", payload
    return command, {}


class UsageError(Exception):
    """The command line is wrong; exit 2 with the message."""


def call_arguments(assignments: list[str]) -> dict[str, Any]:
    """``key=value`` gives a string; ``key:=JSON`` a JSON value."""
    import json

    values: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"{item!r}: expected key=value or key:=JSON")
        if key.endswith(":"):
            key = key[:-1]
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{key}: not valid JSON ({exc.msg})") from None
        else:
            values[key] = text
        if not key.isidentifier():
            raise UsageError(f"{key!r}: argument names are Python identifiers")
    return values


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
        frame = encode_request(command, payload)
    except UsageError as exc:
        print(f"drivebayctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = Client(path)
    except PermissionError:
        print(
            f"drivebayctl: permission denied on {path}; run as the daemon's user", file=sys.stderr
        )
        return EXIT_NO_SUCH
    except OSError:
        print(f"drivebayd is not running at {path}", file=sys.stderr)
        return EXIT_NO_SUCH
    try:
        return run(client, command, frame, args)
    except KeyboardInterrupt:
        return 0
    except (ConnectionError, OSError) as exc:
        print(f"drivebayctl: lost the connection to drivebayd at {path}: {exc}", file=sys.stderr)
        return 1
    except ProtocolError as exc:
        print(f"drivebayctl: {exc}; check -s or the config's socket", file=sys.stderr)
        return 1
    finally:
        client.close()


def run(client: Client, command: str, frame: bytes, args: argparse.Namespace) -> int:
    import json

    as_json = getattr(args, "json", False)
    code = 0
    for reply in client.request(frame):
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
            print(json.dumps(reply.result, indent=None if reply.more else 2, default=str))
        else:
            print_human(args.command, reply.result, follow=reply.more)
    return code


def say(line: str, file: TextIO | None = None) -> None:
    """Print one line for a human. Names, messages, paths and values come from
    bundles and drivers: their control characters (ESC, BEL, CR, C1 ...) are
    shown escaped, so nothing they hold can drive the operator's terminal."""
    print(shown(line), file=file)


def shown_lines(text: str) -> str:
    """``text`` (a log tail, an error) with each line escaped as ``say`` does,
    newlines kept."""
    return "\n".join(shown(line) for line in text.split("\n"))


def print_human(command: str, result: Any, follow: bool = False) -> None:
    import json

    if command == "status":
        print_status(result)
    elif command in ("start", "stop", "restart"):
        for row in result:
            outcome = row["message"] if row["ok"] else f"ERROR ({row['message']})"
            say(f"{row['name']}: {outcome}")
    elif command == "tail":
        # The driver's own bytes for a pipe (grep, less -R); escaped for a terminal.
        sys.stdout.write(shown_lines(result) if sys.stdout.isatty() else result)
        sys.stdout.flush()
    elif command == "describe":
        print_describe(result)
    elif command == "avail":
        for row in result:
            label = shown(f"{row['name']}@{row['version']}" if row["name"] else "-")
            file = shown(row["file"])
            say(f"{file:<32} {label:<32} {row['verdict']:<10} {row['message'] or ''}")
    elif command == "version":
        low, high = result["protocol"]
        say(f"drivebayd {result['version']} (protocol {low}..{high})")
    elif command in ("pid",):
        say(str(result))
    elif command == "resources":
        for row in result:
            version = row["version"] or "-"
            pin = f" (pinned {row['pinned']})" if row["pinned"] else ""
            say(f"{row['id']:<24} {row['driver'] + '@' + version + pin:<36} {row['state']}")
    elif command == "call":
        print(json.dumps(result, default=str))  # JSON escapes control characters
    elif command == "resource":
        print_resource_change(result)
    elif isinstance(result, (dict, list)):
        print(json.dumps(result, indent=2, default=str))
    else:
        say(str(result))


def print_resource_change(result: dict[str, Any]) -> None:
    if result.get("removed"):
        say(f"{result['id']}: removed")
    elif "driver" in result:
        pin = f"@{result['pinned']}" if result["pinned"] else ""
        say(f"{result['id']}: added ({result['driver']}{pin})")
    elif "pinned" in result:
        say(
            f"{result['id']}: {'pinned to ' + result['pinned'] if result['pinned'] else 'unpinned'}"
        )
    else:
        say(f"{result['id']}: properties set")


def print_status(rows: list[dict[str, Any]]) -> None:
    names = [shown(f"{r['name']}@{r['version']}" if r["version"] else r["name"]) for r in rows]
    width = max([32, *(len(n) for n in names)]) + 1
    for name, row in zip(names, rows, strict=True):
        say(f"{name:<{width}}{status_state(row):<10} {status_description(row)}")


def status_state(row: dict[str, Any]) -> str:
    """The state, and for a FATAL driver that is retried, when (local time)."""
    retry = row.get("next_retry_at")
    if row["state"] != "FATAL" or retry is None:
        return str(row["state"])
    import time

    return f"FATAL, retry at {time.strftime('%H:%M:%S', time.localtime(retry))}"


def status_description(row: dict[str, Any]) -> str:
    if row["state"] == "RUNNING":
        uptime = int(row["uptime_s"] or 0)
        hours, rest = divmod(uptime, 3600)
        minutes, seconds = divmod(rest, 60)
        count = row["resources"]
        plural = "" if count == 1 else "s"
        uptime_text = f"{hours}:{minutes:02d}:{seconds:02d}"
        return f"pid {row['pid']}, uptime {uptime_text}, {count} resource{plural}"
    return str(row["message"] or "Not started")


def print_operations(info: dict[str, Any]) -> None:
    """One line per operation (``async resize(name: str) -> dict``) and its
    summary below it; the names alone from a daemon that sends no details."""
    details = info.get("operation_details") or []
    if not details:
        say(f"  {'operations:':<14}{', '.join(info['operations']) or '-'}")
        return
    say("  operations:")
    for op in details:
        say(f"    {'async ' if op['async'] else ''}{op['name']}{op['signature']}")
        if op["summary"]:
            say(f"        {op['summary']}")


def print_describe(info: dict[str, Any]) -> None:
    say(f"{info['name']}@{info['version']}  {info['state']}  {info['message']}")
    for key in (
        "description",
        "category",
        "entrypoint",
        "pid",
        "restarts",
        "codec",
        "loop",
        "bundle",
        "stored_at",
        "env_key",
    ):
        say(f"  {key + ':':<14}{info.get(key)}")
    say(f"  {'requires:':<14}{', '.join(info['requires']) or '-'}")
    say(f"  {'dependencies:':<14}{', '.join(info['dependencies']) or '-'}")
    print_operations(info)
    say(f"  {'limits:':<14}{', '.join(f'{k}={v}' for k, v in info['limits'].items()) or '-'}")
    for stream, path in info["logs"].items():
        say(f"  {stream + ' log:':<14}{path}")
    if info["properties"]:
        say("  properties:")
        for prop in info["properties"]:
            need = "required" if prop["required"] else "optional"
            label = prop.get("label_text") or prop.get("label") or ""
            say(f"    {prop['key']:<16}{prop['type']:<9}{need:<9}{label}")
            help_text = prop.get("description_text") or ""
            if help_text:
                say(f"    {'':<34}{help_text}")
    say("  history:")
    import time

    for move in info["history"]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(move["at"]))
        reason = f"  ({move['reason']})" if move["reason"] else ""
        say(f"    {at}  {move['from']} -> {move['to']}{reason}")


if __name__ == "__main__":
    sys.exit(main())
