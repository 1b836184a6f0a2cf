"""Resources as the kernel holds them: stored definitions plus one actor each.

``ResourceBook`` is the kernel's door for everything about resources: it
validates property bags against the schema of the version a resource is
bound to, keeps the SQLite store and the actors in step, and routes
operations to actors. Which slot an actor is bound to is the kernel's
decision (its router).

Each change is one unit, whose answer is the truth now and after a restart:
a change (``set``, ``pin``, ``rm``) is stored first and then applied, and
stored back as it was when the driver refuses it; a new resource is
attached first (the driver may refuse it) and then stored, and detached
and forgotten when it cannot be stored. A resource being added takes no
operations before it is stored.

Each change that took is told to the event ring: ``resource.added``,
``resource.changed`` (properties or pin), ``resource.removed``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from drivebay.kernel.resources.actor import ResourceActor, Router
from drivebay.kernel.resources.properties import PropertyErrors, convert_cli, merge, validate
from drivebay.kernel.resources.store import Resource, ResourceStore, check_resource_id
from drivebay.protocol.errors import DrivebayError, NoSuchName, RequestError
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.bundles import Manifest

if TYPE_CHECKING:
    from drivebay.kernel.control.schema import EventType
    from drivebay.kernel.drivers.slot import DriverSlot
    from drivebay.kernel.events import EventLog

log = logging.getLogger("drivebay.resources")

SchemaLookup = Callable[[str, str | None], Manifest]  # (driver, pinned version) -> manifest


def checked_properties(
    manifest: Manifest, base: dict[str, Any], assignments: Sequence[str], resource_id: str
) -> dict[str, Any]:
    """``base`` changed by command-line ``assignments``, validated against the
    schema; RequestError listing every problem, one line each, otherwise."""
    problems: list[str] = []
    changes: dict[str, Any] = {}
    unconverted: set[str] = set()
    given: set[str] = set()
    for assignment in assignments:
        key = assignment.partition("=")[0].removesuffix(":")
        if key in given:  # converted one word at a time: convert_cli cannot see it
            problems.append(f"{shown(key)}: given more than once; give each key once")
            continue
        given.add(key)
        try:
            changes.update(convert_cli(manifest.properties, [assignment]))
        except PropertyErrors as exc:
            problems.extend(exc.problems)
            unconverted.add(assignment.partition("=")[0].removesuffix(":"))
    try:
        return_value = validate(manifest.properties, merge(base, changes), driver=manifest.name)
    except PropertyErrors as exc:
        # A key that failed to convert is not also "required".
        problems.extend(p for p in exc.problems if p.partition(":")[0] not in unconverted)
    if problems:
        lines = "\n  ".join(problems)
        raise RequestError(f"invalid properties for {resource_id} ({manifest.name}):\n  {lines}")
    return return_value


def no_such_resource(resource_id: str) -> NoSuchName:
    """The error for a resource id the daemon does not know (or, to a token
    limited to other drivers, does not show: ``kernel/control/scope.py``)."""
    return NoSuchName(f"no such resource: {resource_id} (drivebayctl resources lists them)")


class ResourceBook:
    def __init__(
        self,
        store: ResourceStore,
        router: Router,
        schema: SchemaLookup,
        mailbox_size: int,
        wait_running_s: float,
        events: EventLog | None = None,
    ) -> None:
        self.store = store
        self._events = events
        self.actors: dict[str, ResourceActor] = {}
        # Ids being added: their actor attaches, but is not stored yet.
        self._adding: set[str] = set()
        # Ids being removed: their actor is closing (detaching its instance).
        self._removing: set[str] = set()
        # One change at a time per resource (rm excepted: it ends the others).
        self._changing: dict[str, asyncio.Lock] = {}
        self._router = router
        self._schema = schema
        self._mailbox_size = mailbox_size
        self._wait_running_s = wait_running_s

    # -- life ------------------------------------------------------------------------

    def restore(self) -> int:
        """Create an actor for every stored resource (bindings come from the router)."""
        for resource in self.store.all():
            self._spawn_actor(resource)
        return len(self.actors)

    def _spawn_actor(self, resource: Resource) -> ResourceActor:
        actor = ResourceActor(
            resource.id,
            resource.driver,
            dict(resource.properties),
            self._router,
            self._mailbox_size,
            self._wait_running_s,
        )
        actor.pinned = resource.pinned
        self.actors[resource.id] = actor
        actor.launch()
        return actor

    async def close(self) -> None:
        """Stop every actor without detaching (their processes are stopping anyway)."""
        await asyncio.gather(*(actor.close(detach=False) for actor in self.actors.values()))
        self.actors.clear()
        self.store.close()

    def actor(self, resource_id: str) -> ResourceActor:
        """The actor of a stored resource; raises ``NoSuchName`` otherwise."""
        actor = self.actors.get(resource_id)
        if actor is None or resource_id in self._adding:
            raise no_such_resource(resource_id)
        return actor

    def bound_to(self, slot: DriverSlot) -> list[ResourceActor]:
        return [actor for actor in self._stored() if actor.bound is slot]

    def bound_counts(self) -> dict[DriverSlot, int]:
        """How many stored resources each slot serves: one pass over the
        resources for a status of every driver."""
        counts: dict[DriverSlot, int] = {}
        for actor in self._stored():
            if actor.bound is not None:
                counts[actor.bound] = counts.get(actor.bound, 0) + 1
        return counts

    async def driver_named(self, resource_id: str) -> str:
        """The driver of a stored resource; raises ``NoSuchName`` otherwise."""
        return self.actor(resource_id).driver

    def driver_of(self, resource_id: str) -> str | None:
        """The driver of a stored resource (None: no such resource), for authorization."""
        actor = self.actors.get(resource_id)
        return actor.driver if actor is not None else None

    def _stored(self) -> list[ResourceActor]:
        return [a for a in self.actors.values() if a.resource_id not in self._adding]

    # -- commands --------------------------------------------------------------------

    async def add(
        self, resource_id: str, driver: str, pinned: str | None, assignments: Sequence[str]
    ) -> Resource:
        """Validate, attach, then store. Nothing is kept when the driver
        refuses or the store fails: the actor is closed and its instance
        detached, and a retry starts afresh."""
        if resource_id in self._adding:
            raise RequestError(
                f"resource {resource_id} is being added by another request; "
                "'drivebayctl resources' lists it once that is done"
            )
        if resource_id in self.actors:
            raise RequestError(
                f"resource {resource_id} already exists; use 'resource set' to change it"
            )
        if resource_id in self._removing:  # its old instance is still being detached
            raise RequestError(
                f"resource {resource_id} is being removed by another request; add it again "
                "once that is done"
            )
        manifest = self._schema(driver, pinned)
        check_resource_id(resource_id)
        properties = checked_properties(manifest, {}, assignments, resource_id)
        resource = Resource(id=resource_id, driver=driver, pinned=pinned, properties=properties)
        self._adding.add(resource_id)
        # In the book while it attaches, so that an upgrade moves it too.
        actor = self._spawn_actor(resource)
        try:
            try:
                await actor.rebind(await self._router(actor))
            except Exception as exc:
                raise RequestError(f"{driver} refused resource {resource_id}: {exc}") from exc
            self.store.add(resource)
        except BaseException:  # cancelled too: keep memory, driver and store in step
            self.actors.pop(resource_id, None)
            await actor.close()
            raise
        finally:
            self._adding.discard(resource_id)
        self._tell("resource.added", resource, pinned=pinned, properties=sorted(properties))
        return resource

    async def set(self, resource_id: str, assignments: Sequence[str]) -> Resource:
        """Change properties: stored, then applied between two operations by
        re-attaching; stored back as they were when the driver refuses."""
        async with self._change(resource_id) as actor:
            manifest = self._schema(actor.driver, actor.pinned)
            properties = checked_properties(manifest, actor.properties, assignments, resource_id)
            before = self._definition(actor)
            changed = await self._stored_then_applied(
                before,
                msgspec.structs.replace(before, properties=properties),
                lambda: actor.rebind(None, properties),
                f"{actor.driver} refused the new properties of {resource_id}",
            )
        keys = sorted(
            {assignment.partition("=")[0].removesuffix(":") for assignment in assignments}
        )
        self._tell("resource.changed", changed, properties=keys)
        return changed

    async def pin(self, resource_id: str, version: str | None) -> Resource:
        """Pin to ``version`` (None: follow the newest): stored, then moved;
        stored back when the move fails."""
        async with self._change(resource_id) as actor:
            if version is not None:
                self._schema(actor.driver, version)  # raises when that version is not installed
            before = self._definition(actor)

            async def move() -> None:
                actor.pinned = version
                try:
                    await actor.rebind(await self._router(actor))
                except BaseException:
                    actor.pinned = before.pinned
                    raise

            pinned = await self._stored_then_applied(
                before,
                msgspec.structs.replace(before, pinned=version),
                move,
                f"could not move {resource_id} to {version or 'the newest version'}",
            )
        self._tell("resource.changed", pinned, pinned=version)
        return pinned

    def _tell(self, kind: EventType, resource: Resource, **data: Any) -> None:
        """One event about ``resource`` (property values stay out: they may be secrets)."""
        if self._events is not None:
            self._events.emit(kind, driver=resource.driver, resource=resource.id, data=data)

    async def _stored_then_applied(
        self,
        before: Resource,
        after: Resource,
        apply: Callable[[], Awaitable[None]],
        refused: str,
    ) -> Resource:
        """Store ``after``, then ``apply`` it; when that fails (or is
        cancelled), store ``before`` back: the change did not happen."""
        self.store.update(after)
        try:
            await apply()
        except BaseException as exc:
            self._store_back(before)
            if not isinstance(exc, Exception):
                raise
            raise RequestError(f"{refused}: {exc}") from exc
        return after

    async def remove(self, resource_id: str) -> None:
        """Forget the resource: stored first (when that fails it stays, and
        serves), then its actor is closed and its instance detached."""
        actor = self.actor(resource_id)
        try:
            self.store.remove(resource_id)
        except NoSuchName:
            log.warning("%s was not in the state store; removing it from memory", resource_id)
        self._tell("resource.removed", self._definition(actor))
        if self.actors.get(resource_id) is actor:
            del self.actors[resource_id]
        self._changing.pop(resource_id, None)
        self._removing.add(resource_id)
        try:
            await actor.close(detach=True)
        finally:
            self._removing.discard(resource_id)

    @contextlib.asynccontextmanager
    async def _change(self, resource_id: str) -> AsyncIterator[ResourceActor]:
        """The resource's actor, changed by one request at a time."""
        self.actor(resource_id)  # raises NoSuchName before any wait
        async with self._changing.setdefault(resource_id, asyncio.Lock()):
            yield self.actor(resource_id)  # removed meanwhile: NoSuchName

    def _store_back(self, before: Resource) -> None:
        """Undo a stored change the driver did not take; a resource removed
        meanwhile stays removed."""
        try:
            self.store.update(before)
        except NoSuchName:
            pass
        except DrivebayError as exc:
            log.error(
                "%s: the driver refused a change that is stored, and the previous "
                "definition cannot be stored back (%s); after a restart the resource "
                "has the refused definition",
                before.id,
                exc,
            )

    def call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> asyncio.Future[Any]:
        """Queue an operation; await the future for its result (no coroutine
        of its own: this is the in-process hot path)."""
        return self.actor(resource_id).submit(op, args, timeout)

    async def refreshed(self) -> None:
        """Bring what ``rows`` and ``page`` show up to date (nothing to do here:
        the actors are the resources)."""

    def rows(self) -> list[dict[str, Any]]:
        """Every stored resource's row, ordered by id."""
        return [self._row(self.actors[key]) for key in self._ordered_ids()]

    def page(
        self, limit: int | None, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        """At most ``limit`` rows of the resources whose ids sort after
        ``after`` (None: from the first), the ``after`` of the next page (None:
        none is left) and how many resources there are in all."""
        ids = self._ordered_ids()
        start = 0 if after is None else bisect.bisect_right(ids, after)
        end = len(ids) if limit is None else min(len(ids), start + limit)
        rows = [self._row(self.actors[key]) for key in ids[start:end]]
        return rows, ids[end - 1] if end < len(ids) else None, len(ids)

    def _ordered_ids(self) -> list[str]:
        return sorted(key for key in self.actors if key not in self._adding)

    @staticmethod
    def _row(actor: ResourceActor) -> dict[str, Any]:
        return {
            "id": actor.resource_id,
            "driver": actor.driver,
            "version": actor.bound.manifest.version if actor.attached and actor.bound else None,
            "pinned": actor.pinned,
            "properties": actor.properties,
            "state": actor.state_text,
            "queued": actor.queued,
            "last_event": actor.last_event,
        }

    @staticmethod
    def _definition(actor: ResourceActor) -> Resource:
        return Resource(
            id=actor.resource_id,
            driver=actor.driver,
            pinned=actor.pinned,
            properties=dict(actor.properties),
        )
