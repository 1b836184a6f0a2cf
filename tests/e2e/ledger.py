"""A test driver that writes a ledger line for every operation it runs.

Each line is JSON: the operation's id, resource, sequence number, the
driver's version and pid, and start and end on CLOCK_MONOTONIC (shared by
all processes of the machine, so lines of two driver processes compare).
Health checks are written too, so a test can tell whether an operation
reached a version before its health check passed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.sandbox.bundles import make_bundle

SOURCE = """
import asyncio
import json
import os
import time

VERSION = {version!r}
HEALTHY = {healthy!r}
LEDGER = os.environ["LEDGER_PATH"]


def _pid():
    # Our pid as the daemon sees it: in our PID namespace we are 2.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[1])
    return os.getpid()


PID = _pid()


def _write(record):
    line = (json.dumps(record) + "\\n").encode()
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class LedgerDriver:
    @classmethod
    async def health(cls):
        _write({{"kind": "health", "version": VERSION, "pid": PID,
                 "at": time.monotonic(), "ok": HEALTHY}})
        return {{"ok": HEALTHY, "reason": "configured to fail" if not HEALTHY else ""}}

    def __init__(self, resource_id, properties):
        self.resource_id = resource_id
        self.properties = properties

    async def record(self, number, seq):
        start = time.monotonic()
        await asyncio.sleep(0)
        end = time.monotonic()
        _write({{"kind": "op", "op_id": number, "resource": self.resource_id, "seq": seq,
                 "version": VERSION, "pid": PID, "start": start, "end": end,
                 "colour": self.properties.get("colour")}})
        return {{"version": VERSION, "pid": PID}}
"""

PROPERTIES = [{"key": "colour", "type": "string", "required": False, "max_length": 20}]


def ledger_bundle(root: Path, version: str, healthy: bool = True) -> Path:
    src = {"ledger.py": SOURCE.format(version=version, healthy=healthy)}
    manifest = {"category": "storage", "properties": PROPERTIES}
    bundle = make_bundle(root, name="ledger", version=version, manifest_extra=manifest, src=src)
    return bundle


def read_ledger(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ops, health = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        (ops if record["kind"] == "op" else health).append(record)
    return ops, health
