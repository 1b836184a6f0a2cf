"""How many state moves a handover keeps in flight: adapted to what they cost.

A driver process answers the moves sent to it one after another, so each
move in flight waits for those ahead of it: the wider the window, the longer
each moving resource is stalled, and once the processes are busy the
handover ends no sooner. ``MoveWindow`` finds that point as TCP Vegas
does: the quickest move seen so far is what a move costs with nothing ahead
of it; each move that took at most twice that (or ``FLOOR_S``, below which
a move is quick whatever the ratio) widens the window by one, up to
``limit`` (the daemon's ``handover_moves``); a slower one, a sign of moves
queueing behind each other, halves it, at most once per such move's time.
On an idle machine the window opens until the round trips overlap; on a
busy one it stays narrow, the resources waiting their turn being served by
the old version meanwhile; hooks that wait on I/O are slow from the first
move and overlap as wide as they keep their pace. Sans-I/O: the caller
passes the clock.
"""

from __future__ import annotations

START = 4
FLOOR_S = 0.002  # a move this quick never narrows the window


class MoveWindow:
    """The moves that may be in flight now (``width``), from those that ended."""

    __slots__ = ("_adapts", "_cut_at", "_least", "limit", "width")

    def __init__(self, limit: int, adapts: bool = True) -> None:
        """``adapts`` False: ``limit`` in flight all along."""
        self.limit = max(1, limit)
        self.width = min(START, self.limit) if adapts else self.limit
        self._adapts = adapts
        self._least = float("inf")
        self._cut_at = float("-inf")

    def ended(self, took_s: float, now: float) -> None:
        """A move that started ``took_s`` before ``now`` ended."""
        if not self._adapts:
            return
        self._least = least = min(self._least, took_s)
        if took_s <= max(2 * least, FLOOR_S):
            self.width = min(self.limit, self.width + 1)
        elif now - self._cut_at >= took_s:
            self.width = max(1, self.width // 2)
            self._cut_at = now
