"""This node's place in the cluster over time: join, renew and claim every
``renew_s``, keep the fence, and say which resources it gained and lost.

``Membership.run`` is one task, owned by whoever starts it (the kernel's task
group, once wired): it connects (again after any failure), migrates,
registers once per process, then each round sends one renewal and one claim
and hands the changes to ``on_change``; a round comes every ``renew_s``,
or sooner (``claim_soon``) when a resource was added somewhere. ``fence``
says whether this node may dispatch now; it closes on its own ``lease_s -
grace_s`` after the last
renewal that got through, whatever the database is doing. ``stop`` makes
``run`` leave the cluster and return: first it lets the calls in flight
end (``until_idle``, bounded by ``leave_after_s``; no new dispatch, the
leases renewed meanwhile, so that no other node takes a resource over while
its call still runs here), then its leases end at once. Cancelling ``run``
instead leaves the leases to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import psycopg

from drivebay.kernel.cluster.connection import bounded, connect
from drivebay.kernel.cluster.lease import Fence
from drivebay.kernel.cluster.repository import ClusterRepository
from drivebay.kernel.cluster.schema import SchemaRefused, migrate
from drivebay.kernel.cluster.settings import ClusterSettings, shown_database
from drivebay.protocol.errors import KernelError

log = logging.getLogger("drivebay.cluster")
OnChange = Callable[[dict[str, int], set[str]], None]  # gained {resource: epoch}, lost ids
AfterRound = Callable[[ClusterRepository], Awaitable[None]]
UntilIdle = Callable[[], Awaitable[None]]  # returns once no call of this node is in flight
# A round asked for early (a resource was added) comes at most this soon after the last.
EARLY_ROUND_GAP_S = 0.5


class NodeIdTaken(KernelError):
    """Another process registered this node's id while this one ran (a node
    started twice, or a copy of its config elsewhere): this one stops rather
    than take the id back, which would end the other's leases in turn."""


class Membership:
    """One node's membership; ``run`` it as a task, ``stop`` to leave."""

    def __init__(
        self,
        settings: ClusterSettings,
        drivers: Iterable[str],
        on_change: OnChange,
        *,
        versions: Iterable[str] = (),
        after_round: AfterRound | None = None,
        until_idle: UntilIdle | None = None,
        leave_after_s: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.fence = Fence(settings.lease_s, settings.grace_s, clock)
        self.owned: dict[str, int] = {}  # resource -> epoch, as the last round found
        self.rounds = 0  # rounds that got through to the database
        self._drivers = sorted(set(drivers))
        self._versions = sorted(set(versions))
        self._on_change = on_change
        self._after_round = after_round
        self._until_idle = until_idle
        self._leave_after_s = leave_after_s  # read when leaving (a reload may change it)
        self._clock = clock
        self._stopping = asyncio.Event()
        self._soon = asyncio.Event()  # end the pause before the next round (claim_soon, stop)
        self._stopped_at: float | None = None  # when ``stop`` was called (``clock``)
        self._incarnation: int | None = None
        self._failing = False  # said so in the log
        self._drivers_changed = False  # to be written at the next round

    def set_drivers(self, drivers: Iterable[str], versions: Iterable[str]) -> None:
        """The node runs ``drivers`` and ``versions`` now: written at the next
        round (at the registration if it has not joined yet)."""
        drivers, versions = sorted(set(drivers)), sorted(set(versions))
        if (drivers, versions) != (self._drivers, self._versions):
            self._drivers, self._versions = drivers, versions
            self._drivers_changed = True

    def stop(self) -> None:
        """Ask ``run`` to leave the cluster and return."""
        if self._stopped_at is None:
            self._stopped_at = self._clock()
        self._stopping.set()
        self._soon.set()

    def claim_soon(self) -> None:
        """A resource was added (``listener.Listener`` heard it): the next
        round comes now rather than ``renew_s`` after the last one, but never
        sooner than ``early_gap_s`` after it, whatever the number of adds."""
        self._soon.set()

    @property
    def early_gap_s(self) -> float:
        """The least time between the start of two rounds."""
        return min(self.settings.renew_s / 5, EARLY_ROUND_GAP_S)

    async def run(self) -> None:
        """Take part until ``stop``: connect, and after any failure of the
        database connect again, at most every ``renew_s``. Raises
        ``SchemaRefused`` (no retry helps) when the database's schema is
        newer than this code or not drivebay's, and ``NodeIdTaken`` when
        another process registered this node id meanwhile."""
        while not self._stopping.is_set():
            try:
                await self._connected()
            except (SchemaRefused, NodeIdTaken):
                self.fence.fence()
                raise
            except (psycopg.Error, KernelError, TimeoutError) as exc:
                self._failed(exc)
                await self._pause(self.settings.renew_s)
        if self.owned:  # stopped while the database failed: no leave, the leases expire
            self.fence.fence()
            self._change({}, set(self.owned))  # the workers end now

    async def _connected(self) -> None:
        async with asyncio.timeout(self.settings.renew_s):
            db = await connect(self.settings)
        async with db:
            repository = ClusterRepository(db, self.settings.node_id, self.settings.lease_s)
            if self._incarnation is not None:
                repository.resume(self._incarnation, self._drivers, self._versions)
            await bounded(self.settings.lease_s, migrate(db))
            while not self._stopping.is_set():
                started = self._clock()
                await bounded(self.settings.renew_s, self._round(repository))
                self._recovered()
                await self._between_rounds(started)
            await self._settle_before_leaving(repository)
            await bounded(self.settings.renew_s, repository.leave())
            self.fence.fence()
            self._change({}, set(self.owned))

    async def _round(self, repository: ClusterRepository) -> None:
        """One renewal and one claim; the fence and ``owned`` follow the answers."""
        sent = self.fence.sending()
        if repository.incarnation is None:  # this process joins
            self._drivers_changed = False
            self._incarnation = await repository.register(self._drivers, self._versions)
            sent = self.fence.sending()
            renewed: dict[str, int] | None = {}
        else:
            # Not written (another process has the id): renew says so below.
            if self._drivers_changed and await repository.set_drivers(
                self._drivers, self._versions
            ):
                self._drivers_changed = False
            renewed = await repository.renew()
        if renewed is None:
            self.fence.fence()
            self._change({}, set(self.owned))
            raise NodeIdTaken(
                f"cluster.node_id {self.settings.node_id} was registered by another drivebayd "
                "process since this one joined; this one stops: give each node its own node_id"
            )
        # What was lost is dropped before the fence opens again: while it is
        # open, ``owned`` holds only leases the database has just confirmed.
        self._change({}, {r for r, epoch in self.owned.items() if renewed.get(r) != epoch})
        self.fence.renewed(sent)
        claimed = {lease.resource_id: lease.epoch for lease in await repository.claim()}
        self._change(claimed, set())
        if self._after_round is not None:
            await self._after_round(repository)
        self.rounds += 1

    async def _settle_before_leaving(self, repository: ClusterRepository) -> None:
        """Dispatch nothing more (every resource reported lost: its worker
        ends after its call in flight, whose result write is guarded by the
        epoch it still holds), and keep the leases renewed until the calls
        in flight have ended or ``leave_after_s`` has passed since ``stop``
        (the round in progress then counts); a call still running then is
        settled by the heir, as after a kill."""
        if self._until_idle is None or not self.owned:
            return
        self._change({}, set(self.owned))
        idle = asyncio.ensure_future(self._until_idle())
        bound = self._leave_after_s()
        deadline = (self._clock() if self._stopped_at is None else self._stopped_at) + bound
        try:
            while not idle.done():
                left = deadline - self._clock()
                if left <= 0:
                    log.warning(
                        "cluster: calls still in flight after %g s; node %s leaves, "
                        "the next owners settle them",
                        bound,
                        self.settings.node_id,
                    )
                    return
                await bounded(self.settings.renew_s, repository.renew())
                await asyncio.wait({idle}, timeout=min(left, self.settings.renew_s))
        finally:
            idle.cancel()
            await asyncio.gather(idle, return_exceptions=True)

    def give_up(self, resource_ids: set[str]) -> None:
        """Stop owning these (reported as lost) before releasing them."""
        self._change({}, resource_ids)

    def take_back(self, leases: dict[str, int]) -> None:
        """Own again what a release left with this node (reported as gained)."""
        self._change(leases, set())

    def _change(self, gained: dict[str, int], lost: set[str]) -> None:
        for resource in lost:
            self.owned.pop(resource, None)
        self.owned.update(gained)
        if gained or lost:
            self._on_change(gained, lost)

    async def _between_rounds(self, started: float) -> None:
        """Until ``renew_s`` after ``started``, or ``claim_soon`` (at least
        ``early_gap_s`` after it), or ``stop``."""
        await self._pause(started + self.early_gap_s - self._clock())
        rest = started + self.settings.renew_s - self._clock()
        if rest > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), rest)
        self._soon.clear()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if ``stop`` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "cluster database %s: %s; this node stops dispatching %.1f s after its last "
                "renewal and keeps trying",
                shown_database(self.settings.database),
                " ".join(str(exc).split()) or type(exc).__name__,
                self.settings.fence_s,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("cluster database reached again; this node renews and claims again")
