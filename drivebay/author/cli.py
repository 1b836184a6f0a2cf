"""The ``drivebay`` command line: one table of commands, each run by its module.

A command's module is imported only when that command runs, so a missing
optional piece never breaks another command and ``drivebay --help`` stays fast.
Every failure an author can cause is a ``DrivebayError``: it prints one line,
``drivebay: <what is wrong; how to fix it>``, and exits 1 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from drivebay import __version__
from drivebay.protocol.errors import DrivebayError
from drivebay.sandbox.bundle_errors import shown

EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Tool:
    """One ``drivebay`` command: its words, the module that runs it, its help."""

    words: tuple[str, ...]
    module: str
    help: str


TOOLS: tuple[Tool, ...] = (
    Tool(("new",), "new", "write a working driver to start from"),
    Tool(("check",), "check", "run every check the daemon would, and start the driver once"),
    Tool(("build",), "build", "resolve dependencies into lib/ and write a reproducible zip"),
    Tool(("key", "new"), "keys", "make an Ed25519 signing key pair"),
    Tool(("key", "certify"), "certify", "vouch for a vendor's key for some driver names"),
    Tool(("sign",), "sign", "sign a bundle (directory or zip)"),
    Tool(("repo", "init"), "repo_init", "create a TUF repository"),
    Tool(("repo", "delegate"), "repo_delegate", "give a vendor its own role for some names"),
    Tool(("repo", "add"), "repo_add", "add bundles to a repository as targets"),
    Tool(("repo", "publish"), "repo_publish", "sign a new snapshot and timestamp"),
    Tool(("repo", "timestamp"), "repo_timestamp", "renew only the timestamp"),
    Tool(("repo", "rotate"), "repo_rotate", "replace a role's key"),
    Tool(("repo", "mirror"), "repo_mirror", "verify a repository and copy it, or re-sign it"),
)


class ToolModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _module(tool: Tool) -> ToolModule:
    return cast(ToolModule, importlib.import_module(f"{__package__}.{tool.module}"))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` imports its module."""
    parser = argparse.ArgumentParser(
        prog="drivebay", description="Create, check, build, sign and publish drivebay drivers."
    )
    parser.add_argument("--version", action="version", version=f"drivebay {__version__}")
    words = [item for item in argv if not item.startswith("-")]
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    }
    for tool in TOOLS:
        for depth in range(1, len(tool.words)):
            group = tool.words[:depth]
            if group not in groups:
                sub = groups[group[:-1]].add_parser(group[-1], help=f"{group[-1]} commands")
                groups[group] = sub.add_subparsers(
                    dest=f"{'_'.join(group)}_command", metavar="COMMAND", required=True
                )
        sub = groups[tool.words[:-1]].add_parser(tool.words[-1], help=tool.help)
        sub.set_defaults(tool=tool)
        if list(tool.words) == words[: len(tool.words)]:
            _module(tool).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    tool: Tool = args.tool
    try:
        return _module(tool).run(args)
    except DrivebayError as exc:
        print(f"drivebay: {shown(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
