"""Many call deadlines on one timer.

A ``call_later`` per call costs about 5 us (create, then cancel on the reply);
at tens of thousands of calls a second that is a large share of the kernel's
budget. ``Deadlines`` keeps (when, key) pairs in a heap and arms one timer for
the earliest. Entries of calls that already ended are dropped lazily, and the
heap is rebuilt when stale entries outnumber live ones, so memory stays
proportional to the calls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Collection
from typing import Any


class Deadlines:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        live: Collection[int],
        on_expire: Callable[[int, Any], None],
    ) -> None:
        self._loop = loop
        self._live = live  # keys still waiting (the caller's pending map)
        self._on_expire = on_expire
        self._heap: list[tuple[float, int, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")

    def add(self, delay: float, key: int, detail: Any) -> None:
        when = self._loop.time() + delay
        heap = self._heap
        heapq.heappush(heap, (when, key, detail))
        if when < self._armed_for:
            self._arm(when)
        if len(heap) > 1024 and len(heap) > 4 * len(self._live):
            self._compact()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = float("inf")
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key, detail = heapq.heappop(heap)
            if key in self._live:
                self._on_expire(key, detail)
        self._compact()
        if heap:
            self._arm(heap[0][0])

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[1] in self._live]
        heapq.heapify(self._heap)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
