"""Resources as the kernel holds them: stored definitions plus one actor each.

``ResourceBook`` is the kernel's door for everything about resources: it
validates property bags against the schema of the version a resource is
bound to, keeps the SQLite store and the actors in step (a definition is
written only once its driver accepted it), and routes operations to actors.
Which slot an actor is bound to is the kernel's decision (its router).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kernel.actor import ResourceActor, Router
from kernel.properties import PropertyErrors, convert_cli, merge, validate
from kernel.resource_store import Resource, ResourceStore, check_resource_id
from protocol.errors import NoSuchName, RequestError
from sandbox.bundle_errors import shown
from sandbox.bundles import Manifest

if TYPE_CHECKING:
    from kernel.supervisor import DriverSlot

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


class ResourceBook:
    def __init__(
        self,
        store: ResourceStore,
        router: Router,
        schema: SchemaLookup,
        mailbox_size: int,
        wait_running_s: float,
    ) -> None:
        self.store = store
        self.actors: dict[str, ResourceActor] = {}
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
        actor = self.actors.get(resource_id)
        if actor is None:
            raise NoSuchName(f"no such resource: {resource_id} (drivebayctl resources lists them)")
        return actor

    def bound_to(self, slot: DriverSlot) -> list[ResourceActor]:
        return [actor for actor in self.actors.values() if actor.bound is slot]

    # -- commands --------------------------------------------------------------------

    async def add(
        self, resource_id: str, driver: str, pinned: str | None, assignments: Sequence[str]
    ) -> Resource:
        """Validate, attach, then store. Nothing is kept when the driver refuses."""
        if resource_id in self.actors:
            raise RequestError(
                f"resource {resource_id} already exists; use 'resource set' to change it"
            )
        manifest = self._schema(driver, pinned)
        check_resource_id(resource_id)
        properties = checked_properties(manifest, {}, assignments, resource_id)
        resource = Resource(id=resource_id, driver=driver, pinned=pinned, properties=properties)
        actor = self._spawn_actor(resource)
        try:
            await actor.rebind(self._router(actor))
        except BaseException as exc:  # cancelled too: keep memory and the store in step
            self.actors.pop(resource_id, None)
            await actor.close()
            if not isinstance(exc, Exception):
                raise
            raise RequestError(f"{driver} refused resource {resource_id}: {exc}") from exc
        self.store.add(resource)
        return resource

    async def set(self, resource_id: str, assignments: Sequence[str]) -> Resource:
        """Change properties; applied between two operations by re-attaching."""
        actor = self.actor(resource_id)
        manifest = self._schema(actor.driver, actor.pinned)
        properties = checked_properties(manifest, actor.properties, assignments, resource_id)
        try:
            await actor.rebind(None, properties)
        except Exception as exc:
            raise RequestError(
                f"{actor.driver} refused the new properties of {resource_id}: {exc}"
            ) from exc
        resource = self._definition(actor)
        self.store.update(resource)
        return resource

    async def pin(self, resource_id: str, version: str | None) -> Resource:
        actor = self.actor(resource_id)
        if version is not None:
            self._schema(actor.driver, version)  # raises when that version is not installed
        previous = actor.pinned
        actor.pinned = version
        try:
            await actor.rebind(self._router(actor))
        except BaseException as exc:  # cancelled too: the pin did not happen
            actor.pinned = previous
            if not isinstance(exc, Exception):
                raise
            raise RequestError(
                f"could not move {resource_id} to {version or 'the newest version'}: {exc}"
            ) from exc
        resource = self._definition(actor)
        self.store.update(resource)
        return resource

    async def remove(self, resource_id: str) -> None:
        actor = self.actor(resource_id)
        del self.actors[resource_id]
        self.store.remove(resource_id)  # first: whatever happens next, it is gone
        await actor.close(detach=True)

    def call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> asyncio.Future[Any]:
        """Queue an operation; await the future for its result (no coroutine
        of its own: this is the in-process hot path)."""
        return self.actor(resource_id).submit(op, args, timeout)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for actor in sorted(self.actors.values(), key=lambda a: a.resource_id):
            rows.append(
                {
                    "id": actor.resource_id,
                    "driver": actor.driver,
                    "version": actor.bound.manifest.version
                    if actor.attached and actor.bound
                    else None,
                    "pinned": actor.pinned,
                    "properties": actor.properties,
                    "state": actor.state_text,
                    "queued": actor.queued,
                    "last_event": actor.last_event,
                }
            )
        return rows

    @staticmethod
    def _definition(actor: ResourceActor) -> Resource:
        return Resource(
            id=actor.resource_id,
            driver=actor.driver,
            pinned=actor.pinned,
            properties=dict(actor.properties),
        )
