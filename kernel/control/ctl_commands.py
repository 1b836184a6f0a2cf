"""drivebayctl's command table: each command once, with its arguments, its
request and its human rendering.

A ``Command`` says how the command line reads (``arguments``), which fields
its request carries on the socket (``fields``: the same as the command's
request Struct in ``kernel/control/schema.py``, which a test checks field by
field), how the request is built from the parsed line (``request``), and how
its result is shown (``render``; a command that prints takes ``--json``).
No msgspec, no asyncio here: ``drivebayctl status`` starts fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from drivebay.kernel.control import ctl_render as show

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    Payload = dict[str, Any]


class UsageError(Exception):
    """The command line is wrong; exit 2 with the message."""


REQUIRED = object()
"""A request field without a default."""


class Field:
    """One field of a request: its name on the wire, its type as written in
    the request Struct, and its default (``REQUIRED``: none)."""

    __slots__ = ("default", "name", "type")

    def __init__(self, name: str, type: str, default: object = REQUIRED) -> None:
        self.name = name
        self.type = type
        self.default = default


class Command:
    """One control command; ``words`` is how the command line names it (empty
    for a request drivebayctl sends for another command, as ``tail -f`` sends
    ``tail-follow``)."""

    __slots__ = ("arguments", "build", "fields", "help", "render", "wire", "words")

    def __init__(
        self,
        wire: str,
        help: str,
        fields: tuple[Field, ...] = (),
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        render: Callable[[Any], None] | None = None,
        request: Callable[[argparse.Namespace], tuple[str, Payload]] | None = None,
        words: tuple[str, ...] | None = None,
    ) -> None:
        self.wire = wire
        self.help = help
        self.fields = fields
        self.arguments = arguments
        self.render = render
        self.build = request
        self.words = tuple(wire.split("-", 1)) if words is None else words

    def request(self, args: argparse.Namespace) -> tuple[str, Payload]:
        """The command's name on the wire and its request's fields."""
        if self.build is not None:
            return self.build(args)
        return self.wire, {field.name: getattr(args, field.name) for field in self.fields}


# -- arguments and requests that are more than their fields ----------------------------


def _names(required: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("names", nargs="+" if required else "*", metavar="NAME")

    return add


def _name(optional: bool = False) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?" if optional else None, metavar="NAME")

    return add


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


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _names(False)(parser)
    parser.add_argument(
        "--watch", action="store_true", help="print it again at every change, until Ctrl-C"
    )


def _event_count(text: str) -> int:
    """argparse type of ``events -n``: a whole number, 0 or more."""
    import argparse

    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of events (0 or more), got {text!r}")
    return int(text)


def _events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    parser.add_argument(
        "--since", metavar="ID", help="only the events after this id (0: all the ring holds)"
    )
    parser.add_argument("-n", "--last", type=_event_count, metavar="N", help="only the last N")


def _events_request(args: argparse.Namespace) -> tuple[str, Payload]:
    wire = "events-follow" if args.follow else "events"
    return wire, {"since": args.since, "last": args.last}


def _tail_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    parser.add_argument("-n", "--lines", type=_line_count, default=20)
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("stream", nargs="?", choices=["stdout", "stderr"], default="stdout")


def _tail_request(args: argparse.Namespace) -> tuple[str, Payload]:
    wire = "tail-follow" if args.follow else "tail"
    return wire, {"name": args.name, "stream": args.stream, "lines": args.lines}


def _describe_request(args: argparse.Namespace) -> tuple[str, Payload]:
    from drivebay.kernel.resources.catalog import language_from_environment

    return "describe", {"name": args.name, "lang": language_from_environment(os.environ)}


def _assignments(required: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "assignments", nargs="+" if required else "*", metavar="key=value|key:=JSON"
        )

    return add


def _page_size(text: str) -> int:
    """argparse type of ``resources --limit``: 1 to 10000."""
    import argparse

    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(
            f"expected a number of resources (1 to 10000), got {text!r}"
        )
    return int(text)


def _resources_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_page_size, metavar="N", help="one page: at most N resources"
    )
    parser.add_argument(
        "--after", metavar="ID", help="one page: the resources whose ids sort after ID"
    )


def _resource_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--driver", required=True)
    parser.add_argument("--version", help="pin this version")
    _assignments(False)(parser)


def _resource_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID")
    _assignments(True)(parser)


def _resource_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID")


def _pin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID")
    parser.add_argument("version", nargs="?", metavar="VERSION")
    parser.add_argument("--unpin", action="store_true")


def _pin_request(args: argparse.Namespace) -> tuple[str, Payload]:
    if args.unpin == bool(args.version):
        raise UsageError("give either VERSION or --unpin")
    return "resource-pin", {"id": args.id, "version": None if args.unpin else args.version}


def _call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("resource", metavar="RESOURCE")
    parser.add_argument("op", metavar="OP")
    _assignments(False)(parser)
    parser.add_argument("--timeout", type=float, help="seconds the operation may take")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="on failure, print the driver's traceback"
    )


def _call_request(args: argparse.Namespace) -> tuple[str, Payload]:
    payload: Payload = {
        "resource": args.resource,
        "op": args.op,
        "args": call_arguments(args.assignments),
    }
    if args.timeout is not None:
        payload["timeout"] = args.timeout
    return "call", payload


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


def _repo_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("url", metavar="URL", help="http(s)://..., file://... or a directory")
    parser.add_argument("--root", required=True, metavar="FILE", help="its trusted root.json")


def _repo_add_request(args: argparse.Namespace) -> tuple[str, Payload]:
    try:
        with open(args.root, encoding="utf-8") as handle:
            root = handle.read(1 << 20)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--root {args.root}: cannot read it ({exc})") from None
    url = args.url if "://" in args.url else os.path.abspath(args.url)
    return "repo-add", {"name": args.name, "url": url, "root": root}


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    parser.add_argument(
        "--drivers", nargs="+", default=[], metavar="GLOB", help="only drivers matching these"
    )


def _token_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the token's sha256, or its first 8+ hex digits")


def _seconds(text: str) -> float:
    """argparse type of ``drain-node --timeout``: seconds above 0."""
    import argparse

    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds (above 0, at most 86400), got {text!r}")
    return seconds


def _drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node_id", metavar="NAME", help="the node, as drivebayctl nodes lists it")
    parser.add_argument("--undo", action="store_true", help="make it live again")
    parser.add_argument(
        "--force",
        action="store_true",
        help="drain even when no other live node runs some of its drivers",
    )
    parser.add_argument(
        "--wait", action="store_true", help="answer once it holds no resource (see --timeout)"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=60.0, metavar="S", help="how long --wait waits (60)"
    )


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="NAME[==VERSION]")
    parser.add_argument("--repo", metavar="NAME", help="only from this repository")


def _install_request(args: argparse.Namespace) -> tuple[str, Payload]:
    name, sep, version = args.spec.partition("==")
    if not name or (sep and not version):
        raise UsageError(f"{args.spec!r}: expected NAME or NAME==VERSION")
    return "install", {"name": name, "version": version or None, "repo": args.repo}


# -- the table -----------------------------------------------------------------------

NAMES = (Field("names", "list[str]", []),)
TAIL = (Field("name", "str"), Field("stream", "str", "stdout"), Field("lines", "int", 20))
ASSIGNMENTS = Field("assignments", "list[str]", [])
EVENTS = (Field("since", "str | None", None), Field("last", "int | None", None))


def _verb(verb: str) -> Command:
    return Command(verb, f"{verb} NAME... or all", NAMES, _names(True), show.print_outcomes)


COMMANDS: tuple[Command, ...] = (
    Command(
        "status",
        "state of every driver version, or of NAME...",
        NAMES,
        _status_arguments,
        show.print_status,
    ),
    _verb("start"),
    _verb("stop"),
    _verb("restart"),
    Command(
        "tail",
        "last lines of a driver's output",
        TAIL,
        _tail_arguments,
        show.print_tail,
        _tail_request,
    ),
    Command("tail-follow", "tail -f", TAIL, render=show.print_tail, words=()),
    Command(
        "describe",
        "everything about one driver",
        (Field("name", "str"), Field("lang", "str | None", None)),
        _name(),
        show.print_describe,
        _describe_request,
    ),
    Command(
        "avail",
        "every bundle in the drivers dir and in the repositories",
        render=show.print_avail,
    ),
    Command(
        "pid",
        "the daemon's pid, or a driver's",
        (Field("name", "str | None", None),),
        _name(optional=True),
        show.print_value,
    ),
    Command("version", "the daemon's version", render=show.print_version),
    Command(
        "resources",
        "every resource (or a page: --limit N --after ID), its driver, version and state",
        (Field("limit", "int | None", None), Field("after", "str | None", None)),
        _resources_arguments,
        show.print_resources,
    ),
    Command(
        "resource-add",
        "add ID --driver NAME [--version V] [key=value...]",
        (
            Field("id", "str"),
            Field("driver", "str"),
            Field("version", "str | None", None),
            ASSIGNMENTS,
        ),
        _resource_add_arguments,
        show.print_resource_change,
    ),
    Command(
        "resource-set",
        "set ID key=value...",
        (Field("id", "str"), ASSIGNMENTS),
        _resource_set_arguments,
        show.print_resource_change,
    ),
    Command(
        "resource-rm", "rm ID", (Field("id", "str"),), _resource_id, show.print_resource_change
    ),
    Command(
        "resource-pin",
        "pin ID VERSION, or pin ID --unpin",
        (Field("id", "str"), Field("version", "str | None", None)),
        _pin_arguments,
        show.print_resource_change,
        _pin_request,
    ),
    Command(
        "call",
        "call RESOURCE OP [key=value...] [key:=JSON...]",
        (
            Field("resource", "str"),
            Field("op", "str"),
            Field("args", "dict", {}),
            Field("timeout", "float | None", None),
        ),
        _call_arguments,
        show.print_call_result,
        _call_request,
    ),
    Command(
        "repo-add",
        "add NAME URL --root FILE: a TUF repository kept in the state dir",
        (Field("name", "str"), Field("url", "str"), Field("root", "str")),
        _repo_add_arguments,
        show.print_repos,
        _repo_add_request,
    ),
    Command("repo-list", "the repositories (config and kept)", render=show.print_repos),
    Command("nodes", "the nodes of this daemon's cluster", render=show.print_nodes),
    Command(
        "drain-node",
        "drain-node NAME [--wait]: hand a cluster node's resources to the others (--undo)",
        (
            Field("node_id", "str"),
            Field("undo", "bool", False),
            Field("force", "bool", False),
            Field("wait", "bool", False),
            Field("timeout", "float", 60.0),
        ),
        _drain_arguments,
        show.print_drain,
        words=("drain-node",),
    ),
    Command("repo-rm", "rm NAME", (Field("name", "str"),), _name(), show.print_repos),
    Command(
        "install",
        "install NAME[==VERSION] [--repo NAME] from the repositories",
        (
            Field("name", "str"),
            Field("version", "str | None", None),
            Field("repo", "str | None", None),
        ),
        _install_arguments,
        show.print_installed,
        _install_request,
    ),
    Command(
        "events",
        "what happened lately (-f: and what happens next)",
        EVENTS,
        _events_arguments,
        show.print_events,
        _events_request,
    ),
    Command("events-follow", "events -f", EVENTS, render=show.print_events, words=()),
    Command(
        "token-new",
        "new --role ROLE [--drivers GLOB...]: a bearer token for the HTTP API, shown once",
        (Field("role", "str"), Field("drivers", "list[str]", [])),
        _token_arguments,
        show.print_token,
    ),
    Command(
        "token-ls",
        "the bearer tokens: hash, role, drivers (never the token)",
        render=show.print_tokens,
    ),
    Command(
        "token-rm",
        "rm ID: remove a token made by token new (ID: its hash, or 8+ hex digits of it)",
        (Field("id", "str"),),
        _token_id,
        show.print_tokens,
    ),
    Command("reload", "re-read the config and rescan the drivers dir", render=show.print_json),
    Command("shutdown", "stop the daemon and all drivers", render=show.print_json),
)
GROUPS = {
    "resource": "add, set, rm or pin a resource",
    "repo": "add, list or rm a repository",
    "token": "make, list or remove bearer tokens (token new, ls, rm)",
}
"""Help of the command words that are followed by a verb."""

BY_WIRE = {command.wire: command for command in COMMANDS}
BY_WORDS = {command.words: command for command in COMMANDS if command.words}


def command_of(args: argparse.Namespace) -> Command:
    """The table's command that the parsed line names."""
    verb = getattr(args, "verb", None)
    return BY_WORDS[(args.command, verb) if verb else (args.command,)]
