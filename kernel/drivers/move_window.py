"""How many state moves a handover keeps in flight: adapted to what they cost.

A driver process answers the moves sent to it one after another, so each
move in flight waits for those ahead of it: the wider the window, the longer
each moving resource is stalled, and past the point where the processes are
busy, the handover ends no sooner. ``MoveWindow`` finds that point as TCP's
congestion window does (additive increase, multiplicative decrease): each
move that ended within ``STALL_TARGET_S`` of its start widens the window by
one, up to ``limit`` (the daemon's ``handover_moves``); one that took longer
halves it, at most once per ``STALL_TARGET_S``. On an idle machine the
window opens until the moves' round trips overlap; on a busy one it stays
narrow, the resources waiting their turn being served by the old version
meanwhile. Sans-I/O: the caller passes the clock.
"""

from __future__ import annotations

STALL_TARGET_S = 0.010  # what one resource's move may take: its calls wait that long
START = 4


class MoveWindow:
    """The moves that may be in flight now (``width``), from those that ended."""

    __slots__ = ("_adapts", "_cut_at", "limit", "width")

    def __init__(self, limit: int, adapts: bool = True) -> None:
        """``adapts`` False: ``limit`` in flight all along."""
        self.limit = max(1, limit)
        self.width = min(START, self.limit) if adapts else self.limit
        self._adapts = adapts
        self._cut_at = float("-inf")

    def ended(self, took_s: float, now: float) -> None:
        """A move that started ``took_s`` before ``now`` ended."""
        if not self._adapts:
            return
        if took_s <= STALL_TARGET_S:
            self.width = min(self.limit, self.width + 1)
        elif now - self._cut_at >= STALL_TARGET_S:
            self.width = max(1, self.width // 2)
            self._cut_at = now
