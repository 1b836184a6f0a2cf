"""One worker process: started sandboxed, watched through a pidfd, always reaped.

A worker gets its own process group (so stopping it also stops whatever it
started), stdin from /dev/null, stdout and stderr on one pipe whose last lines
are kept, and, before it executes anything, a parent-death signal (it is
SIGKILLed when the driver dies, even by SIGKILL) and an optional address-space
limit. Its exit is seen through a pidfd the event loop watches: no polling,
no SIGCHLD handler, and no one else reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

PR_SET_PDEATHSIG = 1
OUTPUT_LINES = 1000
MAX_LINE = 64 * 1024


def describe_exit(code: int) -> str:
    """``exit status 3`` or ``signal 15 (SIGTERM)``."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def sandbox(memory_bytes: int | None) -> Callable[[], None]:
    """The ``preexec_fn`` of a worker: die with the driver, cap the address space."""
    # Resolved here, in the parent: between fork and exec the child must not
    # load libraries or take locks another thread may have held at the fork.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    if memory_bytes is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if hard != resource.RLIM_INFINITY:
            memory_bytes = min(memory_bytes, hard)  # raising it needs privileges

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the driver died before the signal was armed
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return preexec


class OutputTail(asyncio.Protocol):
    """Keeps the last ``OUTPUT_LINES`` lines a worker wrote (stdout and stderr)."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in complete)
        if len(self._partial) > MAX_LINE:  # a line without end must not grow forever
            self.lines.append(self._partial.decode(errors="replace"))
            self._partial = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self.lines.append(self._partial.decode(errors="replace"))
            self._partial = b""


class Worker:
    """A started worker. ``exited`` resolves to its exit code once it is reaped."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        tail: OutputTail,
        output: asyncio.BaseTransport,
    ) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.tail = tail
        self._output = output
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.ended: float | None = None
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str], memory_bytes: int | None
    ) -> Worker:
        """Start ``argv``. Raises OSError when it cannot be executed."""
        # Popen (not a worker thread, not the loop's subprocess API): the
        # parent-death signal follows the *thread* that forked, and the loop's
        # thread lives as long as the driver; the pidfd lets us own the reaping.
        popen = subprocess.Popen(  # noqa: ASYNC220
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            process_group=0,
            preexec_fn=sandbox(memory_bytes),
        )
        assert popen.stdout is not None
        tail = OutputTail()
        transport = None
        try:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_read_pipe(lambda: tail, popen.stdout)
            return cls(name, popen, tail, transport)
        except BaseException:
            popen.kill()
            popen.wait()
            # Once the transport exists, it owns the pipe's fd.
            (popen.stdout if transport is None else transport).close()
            raise

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def signal(self, signum: int) -> None:
        """Signal the worker's process group, unless it was reaped (its pid
        could then belong to someone else)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    async def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once reaped,
        and never leaves the worker running, even when cancelled."""
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.exited)
            except TimeoutError:
                pass
            finally:
                self.signal(signal.SIGKILL)  # a no-op once it has been reaped
        return await asyncio.shield(self.exited)

    def close(self) -> None:
        """Release the output pipe (the worker must have exited)."""
        self._output.close()

    def describe(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        code = None if self.running else self.exited.result()
        return {
            "name": self.name,
            "pid": self.pid,
            "state": "running" if self.running else "exited",
            "started_at": self.started_at,
            "uptime_s": round(end - self.started, 3),
            "exit_code": code,
            "exit": None if code is None else describe_exit(code),
        }

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        # The leader is a zombie, so its pid (= the group id) cannot be reused
        # yet: end whatever it left behind in its group, then reap it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.ended = time.monotonic()
        self.exited.set_result(self.popen.wait())
