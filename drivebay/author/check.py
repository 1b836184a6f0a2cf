"""``drivebay check BUNDLE [--json]``: would the daemon run this bundle?

Offline and without a daemon, with the daemon's own code (``author.running``):
every check of a dropped bundle (layout, hostile input, manifest, limits),
then its env (built, or reused from the envs dir a daemon shares), then the
driver started once in the real sandbox: its entrypoint must load and
``health`` pass. The report lists the operations with their signatures as
``drivebayctl describe`` shows them, and warns of return annotations naming
types the wire codec cannot carry, of a placeholder LICENSE and of message
keys missing from ``resources/messages.yaml``. Exit 0 only when the daemon
would run it; a load error shows as soon as the child reports it, with the
tail of its stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivebay.author.annotations import problems, return_annotation, source_classes
from drivebay.author.new import LICENSE_PLACEHOLDER
from drivebay.author.running import RunSettings, Scratch, running
from drivebay.kernel.config import Config, load_config
from drivebay.kernel.config_search import find_config
from drivebay.protocol.errors import DrivebayError
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.bundle_layout import BundleFiles
from drivebay.sandbox.bundle_reader import ReadLimits, read_bundle
from drivebay.sandbox.safe_yaml import load_yaml

MESSAGES_FILE = "resources/messages.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle directory or .zip")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--envs",
        metavar="DIR",
        help="build the env here (default: $DRIVEBAY_ENVS_DIR, else the daemon config's "
        "envs dir when writable, else ~/.local/state/drivebay/envs)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the daemon's config to check against (default: found "
        "as drivebayd finds it)"
    )  # fmt: skip


@dataclass
class Report:
    """What ``check`` found, step by step."""

    bundle: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    traceback: str = ""  # where a load error was raised in the driver's code

    @property
    def ok(self) -> bool:
        return not self.error

    def passed(self, step: str, detail: str) -> None:
        self.steps.append({"step": step, "ok": True, "detail": detail})

    def as_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "ok": self.ok,
            "error": self.error,
            "traceback": self.traceback,
            "steps": self.steps,
            "operations": self.operations,
            "warnings": self.warnings,
            "notes": self.notes,
        }


def run(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    report = Report(str(path))
    try:
        asyncio.run(
            check(path, report, _daemon_config(args), Path(args.envs) if args.envs else None)
        )
    except DrivebayError as exc:
        report.error = shown(str(exc))
        report.traceback = "\n".join(getattr(exc, "__notes__", ()))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.ok else 1
    print_report(report)
    if not report.ok:
        raise _Failed(report.error)
    return 0


class _Failed(DrivebayError):
    """The bundle would not run; the message is the first problem found."""


def _daemon_config(args: argparse.Namespace) -> Config | None:
    """The daemon's config, found as ``drivebayd`` finds it; None when there is none."""
    path = find_config(args.config)
    return load_config(path) if path is not None else None


async def check(path: Path, report: Report, config: Config | None, envs: Path | None) -> None:
    """Fill ``report``; raise the first ``DrivebayError`` the daemon would hit.

    ``config`` (None: the defaults) gives the bundle limits, the interpreter,
    the rlimits and the timeouts; the env goes to ``envs`` when given."""
    limits = config.bundles.read_limits() if config is not None else ReadLimits()
    read = await asyncio.to_thread(read_bundle, path, limits)
    manifest = read.manifest
    if config is not None:
        settings = RunSettings.from_config(config, manifest.name, envs)
    else:
        settings = RunSettings(envs_dir=envs) if envs else RunSettings()
    report.passed(
        "bundle",
        f"{manifest.name} {manifest.version} ({manifest.category}): files, layout and "
        "manifest pass the daemon's checks",
    )
    report.warnings.extend(_file_warnings(read))
    scratch = Scratch()
    try:
        bundle = await asyncio.to_thread(scratch.store, read)
        async with running(bundle, scratch, settings) as started:
            env, process = started.env, started.process
            report.passed(
                "env",
                f"{env.key[:12]} in {settings.envs_dir} (codec {env.codec}, loop {env.loop})",
            )
            report.passed("start", f"{manifest.entrypoint} loaded (pid {process.pid})")
            health = await process.health()
            report.passed("health", f"ok: {health}")
            assert process.ready is not None
            details = process.ready.details
            classes = source_classes(read.files)
            for name in sorted(process.ready.operations):
                info = details.get(name)
                signature = info.signature if info else "(...)"
                report.operations.append(
                    {
                        "name": name,
                        "signature": signature,
                        "summary": info.summary if info else "",
                        "async": info.is_async if info else True,
                    }
                )
                annotation = return_annotation(signature)
                for problem in problems(annotation or "", classes):
                    report.warnings.append(f"{name} returns {annotation}: {problem}")
            _judge_hooks(set(process.ready.hooks), report)
            report.warnings.extend(
                idempotent_warnings(manifest.idempotent, process.ready.operations)
            )
    finally:
        await asyncio.to_thread(scratch.remove)
    if manifest.requires:
        report.notes.append(
            f"the daemon starts it once {', '.join(manifest.requires)} "
            f"{'runs' if len(manifest.requires) == 1 else 'run'} (requires:)"
        )


def _judge_hooks(hooks: set[str], report: Report) -> None:
    """What the state hooks the class defines mean for its upgrades."""
    if {"handoff", "takeover"} <= hooks:
        report.notes.append(
            "hands each resource's state to the next version (handoff, takeover) on "
            "upgrades and property changes"
        )
    elif "handoff" in hooks:
        report.notes.append(
            "has handoff but no takeover: its state goes to a later version that has "
            "takeover; this one always starts resources afresh (attach)"
        )
    elif "takeover" in hooks:
        report.notes.append(
            "has takeover but no handoff: it takes state from an earlier version that has "
            "handoff; a later version never gets state from this one"
        )
    if "handoff" in hooks and "handoff_aborted" not in hooks:
        report.warnings.append(
            "handoff without handoff_aborted: after a failed takeover the instance serves "
            "again without being told; resume in handoff_aborted what handoff stopped"
        )


def idempotent_warnings(listed: Iterable[str], operations: Iterable[str]) -> list[str]:
    """A warning for each name in the manifest's ``idempotent`` that the
    loaded class has no operation of (a typo: it would never be run again)."""
    known = set(operations)
    return [
        f"idempotent lists {name!r}, which is no operation of the class: a node taking "
        "over fails it OutcomeUnknown instead of running it again; fix driver.yaml"
        for name in listed
        if name not in known
    ]


def _file_warnings(read: BundleFiles) -> list[str]:
    """A LICENSE still the placeholder; message keys the manifest names but
    ``resources/messages.yaml`` lacks (the daemon then shows the key)."""
    warnings = []
    if LICENSE_PLACEHOLDER.encode() in read.files.get("LICENSE", b""):
        warnings.append(
            "LICENSE is still the placeholder drivebay new wrote; put your license text there"
        )
    keys = {
        key
        for spec in read.manifest.properties
        for key in (spec.label, spec.description)
        if key is not None
    }
    if not keys:
        return warnings
    try:
        messages = load_yaml(read.files.get(MESSAGES_FILE, b""), read.name, MESSAGES_FILE)
    except DrivebayError as exc:
        return [*warnings, f"{exc} (the daemon skips the file)"]
    known = set(messages) if isinstance(messages, dict) else set()
    for key in sorted(keys - known):
        warnings.append(f"{MESSAGES_FILE}: no text for {key!r}; describe shows the key itself")
    return warnings


def print_report(report: Report) -> None:
    for step in report.steps:
        print(f"ok    {step['step']}: {shown(step['detail'])}")
    if report.operations:
        print("operations:")
        for op in report.operations:
            print(f"    {'async ' if op['async'] else ''}{op['name']}{shown(op['signature'])}")
            if op["summary"]:
                print(f"        {shown(op['summary'])}")
    for note in report.notes:
        print(f"note: {shown(note)}")
    for warning in report.warnings:
        print(f"warning: {shown(warning)}", file=sys.stderr)
    if report.traceback:
        print(report.traceback, file=sys.stderr)
