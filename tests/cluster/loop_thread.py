"""An asyncio loop on a thread of its own, for servers a test owns (the TCP
proxy, the fault-point server) that must keep serving while the test blocks
(waiting on a ``drivebayd``) or runs its own loop (``tests.helpers.run``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CALL_S = 30.0  # no call into the loop waits longer


class LoopThread:
    """``start``, ``call`` coroutines on it from any thread, then ``stop``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_S) -> T:
        """Run ``coro`` on the loop and return its result (raising what it raises)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """End the loop and the thread, and close the loop."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CALL_S)
        self.loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
