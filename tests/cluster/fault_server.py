"""The test's end of ``drivebayd``'s fault points (kernel/cluster/fault_points.py):
a Unix socket the nodes started with ``DRIVEBAY_TEST_FAULT_SOCKET`` connect
to at each point of each dispatch, saying which node, point and operation.

Every arrival is kept in ``arrivals`` (in order). One the test asked to
hold (``hold``: a point, and optionally a node and an operation; the first
arrival that matches) waits for ``release``; every other is answered at
once, so the dispatch goes on. ``close`` answers whoever still waits and
removes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.cluster.loop_thread import LoopThread

Arrival = dict[str, Any]  # {"node", "point", "op", "resource", "operation"}


class FaultServer:
    """``start``; ``hold``, ``wait_held``, ``release``; ``close``."""

    def __init__(self) -> None:
        # A short path of its own: a Unix socket path is limited to 107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="dbfault-", dir="/tmp"))
        self.path = str(self._dir / "fault.sock")
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wanted: list[dict[str, Any]] = []  # each holds the first arrival it matches
        self._held: list[tuple[Arrival, asyncio.StreamWriter]] = []
        self._thread = LoopThread("fault server")
        self._server: asyncio.Server | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment a ``drivebayd`` needs to stop at the points here."""
        return {"DRIVEBAY_TEST_FAULT_SOCKET": self.path}

    def start(self) -> FaultServer:
        self._dir.chmod(0o755)
        self._thread.start()
        try:
            self._thread.call(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    def hold(self, point: str, node: str | None = None, resource: str | None = None) -> None:
        """Hold the next arrival at ``point`` (of ``node``, for ``resource``, when given)."""
        with self._lock:
            self._wanted.append({"point": point, "node": node, "resource": resource})

    def wait_held(self, count: int = 1, deadline: float = 30.0) -> list[Arrival]:
        """The arrivals held now, once there are ``count``; fails past ``deadline`` seconds."""
        end = time.monotonic() + deadline
        with self._changed:
            while len(self._held) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self._held)} of {count} dispatches held within {deadline}s; "
                        f"waiting for {self._wanted}; last arrivals: {self.arrivals[-10:]}"
                    )
                self._changed.wait(left)
            return [arrival for arrival, _ in self._held]

    def release(self) -> None:
        """Let every held dispatch go on."""
        with self._lock:
            held, self._held = self._held, []
        for _, writer in held:
            self._thread.call(_answer(writer))

    def reached(self, **match: Any) -> list[Arrival]:
        """The arrivals whose fields equal ``match``."""
        with self._lock:
            return [a for a in self.arrivals if all(a.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        try:
            with contextlib.suppress(RuntimeError):  # the loop never started
                self._thread.call(self._close())
        finally:
            self._thread.stop()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._arrived, self.path)

    async def _arrived(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            arrival: Arrival = json.loads(line)
        except (OSError, TimeoutError, ValueError):
            writer.close()
            return
        with self._changed:
            self.arrivals.append(arrival)
            rule = next((w for w in self._wanted if _matches(arrival, w)), None)
            held = rule is not None
            if rule is not None:
                self._wanted.remove(rule)
                self._held.append((arrival, writer))
                self._changed.notify_all()
        if not held:
            await _answer(writer)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        with self._lock:
            held, self._held = self._held, []
        for _, writer in held:
            await _answer(writer)


def _matches(arrival: Arrival, wanted: dict[str, Any]) -> bool:
    return all(value is None or arrival.get(key) == value for key, value in wanted.items())


async def _answer(writer: asyncio.StreamWriter) -> None:
    """Reply "go" and close: the node goes on."""
    with contextlib.suppress(OSError):
        writer.write(b"go\n")
        await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
