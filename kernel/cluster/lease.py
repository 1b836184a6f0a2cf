"""The rules of ownership that need no database: how many resources a node
claims for an even spread, which resources a drain would leave without any
node to run them, and when a node must stop dispatching (its fence).

Pure functions and one small object over an injected monotonic clock, so the
rules are tested without processes or waiting (docs/cluster.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol


def fair_share(resources: int, nodes: int) -> int:
    """How many of a driver's ``resources`` one of the ``nodes`` live nodes
    that run that driver should own: the ceiling of an even split, so that
    together they cover every resource."""
    if nodes <= 0:
        return 0
    return math.ceil(resources / nodes)


def claim_quota(resources: int, nodes: int, mine: int, claimable: int) -> int:
    """How many of a driver's ``claimable`` (free or expired) resources a node
    that already owns ``mine`` of them claims now: up to its fair share, never
    more than there are. A node that runs the driver counts itself in ``nodes``;
    one that does not run it is not asked."""
    return max(0, min(claimable, fair_share(resources, nodes) - mine))


def surplus(resources: int, nodes: int, mine: int) -> int:
    """How many of a driver's resources a node owning ``mine`` of them gives
    up so that others may claim them: what it holds over its fair share
    (a node that joined later claims only free and expired resources)."""
    return max(0, mine - fair_share(resources, nodes))


class Runs(NamedTuple):
    """What one node runs: driver names and ``NAME@VERSION``s (for pins)."""

    drivers: frozenset[str]
    versions: frozenset[str]

    def can_run(self, driver: str, pinned: str | None) -> bool:
        """Whether this node may own a resource of ``driver`` pinned to ``pinned``."""
        if pinned is None:
            return driver in self.drivers
        return f"{driver}@{pinned}" in self.versions


def stranded(
    groups: Iterable[tuple[str, str | None, int]], others: Iterable[Runs]
) -> dict[str, int]:
    """Driver -> how many of its resources no node of ``others`` (the other
    live nodes) can run, among ``groups`` of (driver, pin, count): the
    resources a drained node could run or holds. Draining it would leave
    those without an owner, so a drain is refused unless forced."""
    able = list(others)
    left: dict[str, int] = {}
    for driver, pinned, count in groups:
        if count and not any(node.can_run(driver, pinned) for node in able):
            left[driver] = left.get(driver, 0) + count
    return left


class Fence:
    """Whether this node may still dispatch, on its own monotonic clock.

    The database extends a lease to ``now() + lease_s`` with its own clock at
    the start of the renewing transaction, which is after the renewal was
    sent. Counting from the moment of sending (``sent``), the lease cannot
    have ended before ``sent + lease_s``; dispatching stops ``grace_s``
    earlier, so that a slow clock or a pause just after the check still ends
    before another node may claim the resource. A node that cannot renew in
    time is fenced until a renewal (or a new claim) succeeds.
    """

    def __init__(
        self, lease_s: float, grace_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = lease_s - grace_s
        self._clock = clock
        self._until: float | None = None  # never renewed: fenced

    def sending(self) -> float:
        """The clock's reading now: take it before sending a renewal or a
        claim, and give it to ``renewed`` once the database has answered."""
        return self._clock()

    def renewed(self, sent: float) -> None:
        """The database extended the leases by a statement sent at ``sent``.
        An answer to an older statement than the last one counted changes
        nothing."""
        until = sent + self._window
        if self._until is None or until > self._until:
            self._until = until

    def fence(self) -> None:
        """Stop at once (the database said a lease was lost, or the node leaves)."""
        self._until = None

    def may_dispatch(self) -> bool:
        """True while the last renewal is recent enough to write a call to a driver."""
        return self._until is not None and self._clock() < self._until

    def remaining(self) -> float:
        """Seconds left before dispatching must stop (0 when fenced)."""
        if self._until is None:
            return 0.0
        return max(0.0, self._until - self._clock())


class Gate(Protocol):
    """What a resource's queue asks before each dispatch and each send."""

    def may_dispatch(self) -> bool: ...


class LeaseGate:
    """The gate of one resource held under one epoch: open while the node's
    fence is open and the node's last round still found that lease
    (``owned``, resource -> epoch). The fence alone is the node's: once a
    renewal reopens it, a queue still running for a resource the node lost
    meanwhile (its epoch gone from ``owned``) must stay shut."""

    def __init__(self, fence: Fence, owned: dict[str, int], resource_id: str, epoch: int) -> None:
        self._fence = fence
        self._owned = owned
        self._resource_id = resource_id
        self._epoch = epoch

    def may_dispatch(self) -> bool:
        return self._owned.get(self._resource_id) == self._epoch and self._fence.may_dispatch()
