"""A full, read-only and immutable state dir for ``chaos.py``.

The daemon runs in a private mount namespace (``unshare -m`` as root,
``unshare -rm`` otherwise) where a small tmpfs covers its state dir; a
holder process keeps the namespace, so the daemon can be restarted in it
and find its state. From outside, the tmpfs is reached through
``/proc/HOLDER/root``; mounts inside are made with ``nsenter``.

Under a load whose every call prints a line (the driver's log is in the
state dir), the disk is filled, then given its space back, then made
read-only, then (as root) the database is made immutable. In each phase
resources are added, changed and removed; each answer is compared with the
daemon's resources at once and after a restart: an OK whose change is not
there after the restart counts as *OK but not executed*. A bundle dropped
while the disk is full must run once the space is back.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _chaos_daemon import Chaosd
from _chaos_load import error_type
from _chaos_scene import Scene

from drivebay.client import AsyncClient, OperationError

LATE = "chaos-late"  # the driver whose bundle is dropped while the disk is full


@dataclass(frozen=True)
class DiskPlan:
    size_mb: int
    changes: int  # of each kind (add, set, rm) per phase
    phase_s: float  # load in each phase
    late_wait_s: float  # for the late bundle to run once the space is back
    warm_s: float
    tail_s: float


def phases() -> list[str]:
    return ["full", "readonly", *(["immutable"] if os.geteuid() == 0 else [])]


class MountNamespace:
    """A private mount namespace with a tmpfs on ``path``, kept by a holder process."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.holder: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
        script = (
            'mount -t tmpfs -o "size=$2m,mode=0755" tmpfs "$1" && echo ready && exec sleep 86400'
        )
        self.holder = await asyncio.create_subprocess_exec(
            *unshare,
            "sh",
            "-c",
            script,
            "sh",
            str(self.path),
            str(self.size_mb),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.holder.stdout is not None
        try:
            line = await asyncio.wait_for(self.holder.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        if line != b"ready\n":
            await self.close()
            raise RuntimeError(f"no tmpfs in a private mount namespace ({' '.join(unshare)})")

    @property
    def enter(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        assert self.holder is not None
        argv = ["nsenter", "-t", str(self.holder.pid), "-m"]
        return argv if os.geteuid() == 0 else [*argv, "-U", "--preserve-credentials"]

    def inside(self, path: Path) -> Path:
        """``path`` as the namespace sees it."""
        assert self.holder is not None
        return Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")

    async def run(self, *argv: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.enter, *argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
        if process.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")

    async def close(self) -> None:
        if self.holder is not None and self.holder.returncode is None:
            self.holder.kill()
            await self.holder.wait()


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; bytes written."""
    chunk, written = bytes(1 << 20), 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            written += os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return written


@dataclass
class Change:
    phase: str
    kind: str  # add, set, rm
    resource: str
    value: str
    answer: str = ""  # OK or the error type
    message: str = ""  # the error's, if any
    live_agrees: bool | None = None


def targets(phase: str, changes: int) -> list[str]:
    """The resources a phase changes (set) or removes (rm), made before the attack."""
    return [f"{phase}-{kind}-{n}" for kind in ("set", "rm") for n in range(changes)]


async def prepare(daemon: Chaosd, driver: str, plan: DiskPlan) -> None:
    for phase in phases():
        for resource in targets(phase, plan.changes):
            await daemon.admin.request(
                "resource-add", {"id": resource, "driver": driver, "assignments": ["colour=old"]}
            )


async def _change(client: AsyncClient, driver: str, change: Change) -> None:
    kind, resource = change.kind, change.resource
    requests: dict[str, tuple[str, dict[str, Any]]] = {
        "add": ("resource-add", {"id": resource, "driver": driver, "assignments": [change.value]}),
        "set": ("resource-set", {"id": resource, "assignments": [change.value]}),
        "rm": ("resource-rm", {"id": resource}),
    }
    request = requests[kind]
    try:
        async with asyncio.timeout(60):
            await client.request(*request)
        change.answer = "OK"
    except OperationError as exc:
        change.answer = error_type(str(exc), exc.code)
        change.message = str(exc)
    except TimeoutError:
        change.answer = "no answer"
    change.live_agrees = _agrees(change, await _resources(client))


async def _resources(client: AsyncClient) -> dict[str, dict[str, Any]]:
    rows = await client.request("resources")
    return {row["id"]: row for row in rows}


def _agrees(change: Change, resources: dict[str, dict[str, Any]]) -> bool:
    """Whether ``resources`` show what the answer said: done when OK, undone otherwise."""
    done = change.answer == "OK"
    row = resources.get(change.resource)
    if change.kind == "add":
        return (row is not None) == done
    if change.kind == "rm":
        return (row is None) == done
    colour = None if row is None else row["properties"].get("colour")
    return colour == (change.value.split("=", 1)[1] if done else "old")


async def _phase(scene: Scene, phase: str, plan: DiskPlan) -> list[Change]:
    made = [
        Change(phase, kind, f"{phase}-{kind}-{n}", f"colour={phase}-{n}")
        for kind in ("add", "set", "rm")
        for n in range(plan.changes)
    ]
    for change in made:
        await _change(scene.daemon.admin, scene.driver, change)
    await asyncio.sleep(plan.phase_s)
    return made


async def disk_full(scene: Scene, ns: MountNamespace, plan: DiskPlan) -> None:
    daemon = scene.daemon
    filler = ns.inside(daemon.state / "filler")
    await asyncio.sleep(plan.warm_s)
    written = await asyncio.to_thread(fill, filler)
    scene.note(f"disk full: {written / 2**20:.1f} MiB written to fill it")
    daemon.drop(LATE)
    changes = await _phase(scene, "full", plan)
    filler.unlink()
    back, errors_then = time.perf_counter(), dict(scene.load.tally.errors)
    await _late_bundle(scene, back, plan.late_wait_s)
    # The tmpfs cannot be remounted read-only while the daemon has files open
    # for writing (EBUSY): a read-only bind mount goes over it instead. Files
    # open before stay writable; every new one is refused (EROFS).
    state = str(daemon.state)
    await ns.run("mount", "--bind", state, state)
    try:
        await ns.run("mount", "-o", "remount,bind,ro", state)
        changes += await _phase(scene, "readonly", plan)
    finally:
        await ns.run("umount", "-l", state)
    if "immutable" in phases():
        db = [ns.inside(daemon.state / name) for name in ("resources.db", "resources.db-wal")]
        db = [path for path in db if path.exists()]
        await _chattr("+i", db)
        try:
            changes += await _phase(scene, "immutable", plan)
        finally:
            await _chattr("-i", db)
    await asyncio.sleep(plan.tail_s)
    later = {k: v - errors_then.get(k, 0) for k, v in scene.load.tally.errors.items()}
    later = {k: v for k, v in later.items() if v}
    scene.note(f"call errors after the space came back: {later or 'none'}")
    scene.after = (daemon.rss_kb(), daemon.fds())
    await scene.end_load()
    await _after_restart(scene, changes)


async def _chattr(flag: str, paths: list[Path]) -> None:
    if not paths:
        return
    process = await asyncio.create_subprocess_exec("chattr", flag, *map(str, paths))
    if await process.wait():
        raise RuntimeError(f"chattr {flag} failed on {paths}")


async def _late_bundle(scene: Scene, back: float, deadline: float) -> None:
    """The bundle dropped while the disk was full must run once the space is back."""
    end = time.monotonic() + deadline
    row: dict[str, Any] | None = None
    while time.monotonic() < end:
        rows = await scene.probe.ask()
        row = next((r for r in rows or [] if r["name"].startswith(LATE)), None)
        if row is not None and row["state"] == "RUNNING":
            took = (time.perf_counter() - back) * 1e3
            scene.note(f"bundle dropped while full: RUNNING {took:,.0f} ms after space came back")
            return
        await asyncio.sleep(0.05)
    state = "absent" if row is None else f"{row['state']} ({row['message']})"
    scene.note(f"bundle dropped while full: NOT running {deadline:g} s after space back: {state}")


async def _after_restart(scene: Scene, changes: list[Change]) -> None:
    """Restart the daemon; compare what it holds with every answer."""
    daemon = scene.daemon
    await scene.probe.pause()
    await daemon.stop()
    await daemon.start()
    scene.probe.client = daemon.admin
    scene.probe.paused = False
    stored = await _resources(daemon.admin)
    lost = sum(1 for c in changes if c.answer == "OK" and not _agrees(c, stored))
    done_anyway = sum(1 for c in changes if c.answer != "OK" and not _agrees(c, stored))
    live_wrong = sum(1 for c in changes if c.live_agrees is False)
    answers: dict[str, int] = {}
    for change in changes:
        answers[change.answer] = answers.get(change.answer, 0) + 1
    scene.note(f"{len(changes)} resource changes ({', '.join(phases())}): answers {answers}")
    for phase in phases():
        said = sorted({c.message for c in changes if c.phase == phase and c.message})
        for message in said[:2]:
            scene.note(f"  {phase}: {message[:110]!r}")
    scene.note(f"  answered OK but lost after a restart: {lost}")
    scene.note(f"  answered with an error but in effect after a restart: {done_anyway}")
    scene.note(f"  answer and the daemon's resources disagreeing at once: {live_wrong}")
    scene.changes_lost = lost
