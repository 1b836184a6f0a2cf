"""Sandboxed worker processes as "instances": a hypervisor without privileges.

Each resource runs one command (``command``, split like a shell would but
never run by one) as up to ``max_instances`` named instances. Every instance
is a process group of its own with a clean environment (``PATH``, ``HOME``,
``LANG``, ``LC_ALL``, ``TZ``, plus ``WORKER_NAME`` and ``WORKER_RESOURCE``),
an optional address-space limit (``memory_mb``) and a parent-death signal:
instances never outlive the driver, whether it detaches, drains or is killed.

An instance that exited stays listed, with its exit code and last output,
until it is started again under the same name.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
from typing import Any

from worker_process import Worker

INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
STOP_GRACE_S = 5.0
# detach runs within the kernel's drain deadline (a few seconds): keep well inside it.
DETACH_GRACE_S = 1.0
MiB = 1 << 20


def _command(properties: dict[str, Any]) -> list[str]:
    """``command`` as an argv whose program is resolved on PATH now, not at each start."""
    command = properties.get("command")
    try:
        argv = shlex.split(command) if isinstance(command, str) else []
    except ValueError as exc:
        raise ValueError(f"command {command!r} cannot be split into arguments: {exc}") from None
    if not argv:
        raise ValueError(f"command must be a program and its arguments, got {command!r}")
    program = shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(
            f"command {argv[0]!r} is not an executable program on PATH; "
            "install it or give its absolute path"
        )
    return [program, *argv[1:]]


def _number(properties: dict[str, Any], key: str, whole: bool) -> float | None:
    """The optional positive number ``key``; ValueError says what is wrong with it."""
    value = properties.get(key)
    if value is None:
        return None
    positive = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if positive and (not whole or float(value).is_integer()):
        return float(value)
    kind = "a whole number" if whole else "a number"
    raise ValueError(f"{key} must be {kind} above 0, got {value!r}")


class WorkerVms:
    """Named instances of ``command``; at most ``max_instances`` running at once."""

    @classmethod
    async def health(cls) -> dict[str, Any]:
        """Ok on Linux with pidfds: the two things instances are built on."""
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            return {"ok": False, "reason": "needs Linux 5.3+ (prctl and pidfd_open)"}
        return {"ok": True}

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.argv = _command(properties)
        limit = _number(properties, "max_instances", whole=True)
        if limit is None:
            raise ValueError("max_instances is required: how many instances may run at once")
        self.max_instances = int(limit)
        memory_mb = _number(properties, "memory_mb", whole=False)
        self.memory_bytes = None if memory_mb is None else int(memory_mb * MiB)
        self._instances: dict[str, Worker] = {}

    async def detach(self) -> None:
        """Stop every instance (SIGTERM, then SIGKILL after 1 s); return once all are reaped."""
        workers = list(self._instances.values())
        self._instances.clear()
        try:
            await asyncio.gather(*(worker.stop(DETACH_GRACE_S) for worker in workers))
        finally:
            for worker in workers:
                worker.close()

    # -- operations -------------------------------------------------------------

    async def start_instance(self, name: str) -> dict[str, Any]:
        """Start an instance called ``name``; its description, with its pid."""
        _check_name(name)
        previous = self._instances.get(name)
        if previous is not None and previous.running:
            raise RuntimeError(f"instance {name!r} is already running (pid {previous.pid})")
        running = sum(worker.running for worker in self._instances.values())
        if running >= self.max_instances:
            raise RuntimeError(
                f"max_instances ({self.max_instances}) are running; "
                "stop one first, or raise max_instances"
            )
        env = {key: os.environ[key] for key in PASSED_ENVIRONMENT if key in os.environ}
        env.update(WORKER_NAME=name, WORKER_RESOURCE=self.resource_id)
        try:
            worker = await Worker.start(name, self.argv, env, self.memory_bytes)
        except OSError as exc:
            hint = "; memory_mb may be too small" if self.memory_bytes else ""
            raise OSError(exc.errno, f"cannot start {name!r}: {exc.strerror or exc}{hint}") from exc
        if previous is not None:
            previous.close()
        self._instances[name] = worker
        return worker.describe()

    async def stop_instance(self, name: str, timeout_s: float = STOP_GRACE_S) -> dict[str, Any]:
        """SIGTERM, SIGKILL after ``timeout_s``; returns once the instance is reaped."""
        worker = self._get(name)
        await worker.stop(timeout_s)
        return worker.describe()

    async def list_instances(self) -> list[dict[str, Any]]:
        """Every instance: name, pid, state, started_at, uptime_s, exit_code, exit."""
        return [self._instances[name].describe() for name in sorted(self._instances)]

    async def instance_output(self, name: str, lines: int = 20) -> list[str]:
        """The last ``lines`` lines the instance wrote to stdout or stderr."""
        tail = self._get(name).tail.lines
        return list(tail)[-lines:] if lines > 0 else []

    def _get(self, name: str) -> Worker:
        worker = self._instances.get(name)
        if worker is None:
            known = ", ".join(sorted(self._instances)) or "none"
            raise LookupError(f"no instance {name!r} (instances: {known}); start_instance first")
        return worker


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not INSTANCE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not an instance name; use 1 to 64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
