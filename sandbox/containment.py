"""What keeps a driver's descendants from outliving it here, said once at start.

Each driver child makes its own PID namespace (``protocol.init_shim``): as
root a plain one, as any other user inside a user namespace of its own, where
the kernel allows that. At start the daemon runs the same code once in a
throwaway child for each identity drivers run as (its own, and each ``user:``
of the config), and logs one line: which mechanism runs, or that drivers fall
back to their process group (a descendant that calls ``setsid()`` then
escapes), and why. ``summarize`` turns the probes' answers into that line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import subprocess
import sys
from pathlib import Path

from drivebay.sandbox.runtime_dir import PACKAGE

PROBE_TIMEOUT_S = 10.0
FALLBACK = (
    "their descendants are ended with their process group only, and one that calls setsid() "
    "can outlive its driver"
)


def summarize(mode: str, found: dict[str, str]) -> tuple[int, str]:
    """The log level and line for ``found`` ({who: what the probe printed})."""
    if mode == "process_group":
        return logging.WARNING, f"containment: process_group (from the config): drivers' {FALLBACK}"
    missing = {who: what for who, what in found.items() if not what.startswith(("PID", "user"))}
    if not missing:
        kinds = ", ".join(f"as {who}: {what}" for who, what in found.items())
        return logging.INFO, f"containment: each driver in a PID namespace of its own ({kinds})"
    reasons = "; ".join(f"as {who}: {what.removeprefix('none: ')}" for who, what in missing.items())
    if mode == "pid_namespace":
        return logging.ERROR, (
            f"containment: pid_namespace is required but the kernel refuses it ({reasons}): "
            "those drivers will not start; set `containment: auto` to fall back to process groups"
        )
    return logging.WARNING, (
        f"containment: no PID namespace for drivers ({reasons}), so drivers' {FALLBACK}; "
        "allow user namespaces (sysctl user.max_user_namespaces) or run drivebayd as root"
    )


async def start_line(mode: str, runtime_dir: Path, users: set[str]) -> tuple[int, str]:
    """The level and line to log at start (probing unless process groups are chosen)."""
    found = {} if mode == "process_group" else await probe(runtime_dir, sorted(users))
    return summarize(mode, found)


async def probe(runtime_dir: Path, users: list[str]) -> dict[str, str]:
    """Run the namespace code as each identity drivers use: {who: result}."""
    identities: dict[str, tuple[int, int] | None] = {_me(): None}
    if os.geteuid() == 0:
        for name in users:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue  # refused with its own message when a driver starts
            identities[name] = (entry.pw_uid, entry.pw_gid)
    results = await asyncio.gather(
        *(asyncio.to_thread(_probe_one, runtime_dir, ids) for ids in identities.values())
    )
    return dict(zip(identities, results, strict=True))


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _probe_one(runtime_dir: Path, ids: tuple[int, int] | None) -> str:
    code = (
        f"import sys; sys.path.insert(0, {str(runtime_dir)!r}); "
        f"from {PACKAGE}.init_shim import probe; probe()"
    )
    extra = [str(ids[0]), str(ids[1])] if ids else []
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", code, *extra],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"none: the probe failed: {exc}"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return f"none: the probe failed (exit status {done.returncode})"
    return lines[-1]
