"""Test a driver bundle in a real driver process: a harness and a pytest fixture.

``DriverHarness(bundle)`` does what the daemon does with a bundle, with the
daemon's own code: it reads and checks the bundle (a directory or a zip),
builds (or reuses) its env, starts the driver in the real sandbox and lets a
test attach resources (properties checked against the manifest's schema as
the daemon checks them), call operations, ask for ``health`` and move every
resource to another version of the bundle (``upgrade``, with ``handoff`` and
``takeover`` when the driver has them, as the daemon moves them)::

    from drivebay.testing import DriverHarness

    def test_greet(tmp_path):
        with DriverHarness("path/to/bundle") as driver:
            driver.attach("r1", {"greeting": "Hi"})
            assert driver.call("r1", "greet", name="Ada") == "Hi, Ada!"

The ``driver`` fixture is the same harness for the bundle the test file lives
in (the nearest directory above it holding ``driver.yaml``; override the
``driver_bundle`` fixture to choose another). Import both into a test module
or a ``conftest.py``: ``from drivebay.testing import driver, driver_bundle``.
``AsyncDriverHarness`` is the same for tests that run their own event loop.

Envs are built in ``$DRIVEBAY_ENVS_DIR`` or, by default, the envs dir of a
daemon with default settings (``~/.local/state/drivebay/envs``): the first
run builds, later runs reuse it (and so does such a daemon).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from drivebay.author.running import Running, RunSettings, Scratch, running
from drivebay.kernel.drivers.state_move import Plan, move_state, plan
from drivebay.kernel.resources.properties import validate
from drivebay.protocol.errors import RequestError
from drivebay.protocol.messages import OperationInfo
from drivebay.sandbox.bundle_store import StoredBundle
from drivebay.sandbox.manifest_schema import MANIFEST_FILE, Manifest

__all__ = ["AsyncDriverHarness", "DriverHarness", "driver", "driver_bundle"]

T = TypeVar("T")
log = logging.getLogger("drivebay.testing")


class AsyncDriverHarness:
    """One bundle's driver in a real child process, for async tests.

    ``async with AsyncDriverHarness(path) as h`` starts it (raising
    ``BundleError``, ``EnvBuildError`` or ``DriverStartError`` — with the
    child's stderr tail — when the daemon could not run it either); on exit
    the child is stopped as the daemon stops a version (Drain: its
    instances detach, then it exits; else SIGTERM, SIGKILL), always reaped,
    and every temporary file is removed.
    """

    def __init__(self, bundle: str | Path, settings: RunSettings | None = None) -> None:
        self.bundle_path = Path(bundle)
        self.settings = settings or RunSettings()
        self.events: list[tuple[str, str, Any]] = []  # (resource id, event name, data)
        self.resources: dict[str, dict[str, Any]] = {}  # id -> validated properties
        self._scratch: Scratch | None = None
        self._stack = contextlib.AsyncExitStack()
        self._current: Running | None = None

    async def __aenter__(self) -> AsyncDriverHarness:
        self._scratch = Scratch()
        try:
            self._current, self._stack = await self._start(self.bundle_path)
        except BaseException:
            self._scratch.remove()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            self._current = None
            if self._scratch is not None:
                self._scratch.remove()

    async def _start(self, path: Path) -> tuple[Running, contextlib.AsyncExitStack]:
        assert self._scratch is not None, "use the harness in an async with"
        bundle = await asyncio.to_thread(self._scratch.load, path, self.settings.read_limits)
        stack = contextlib.AsyncExitStack()
        try:
            started = await stack.enter_async_context(
                running(bundle, self._scratch, self.settings, self._on_event)
            )
        except BaseException:
            await stack.aclose()
            raise
        return started, stack

    def _on_event(self, resource_id: str, name: str, data: Any) -> None:
        self.events.append((resource_id, name, data))

    @property
    def _running(self) -> Running:
        if self._current is None:
            raise RequestError("the harness is not running; use it inside its with block")
        return self._current

    # -- facts -------------------------------------------------------------------

    @property
    def bundle(self) -> StoredBundle:
        return self._running.bundle

    @property
    def manifest(self) -> Manifest:
        return self._running.bundle.manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def operations(self) -> dict[str, OperationInfo]:
        """Each operation's signature, summary and whether it is async (``describe``)."""
        ready = self._running.process.ready
        return dict(ready.details) if ready is not None else {}

    def stderr_tail(self, lines: int = 10) -> str:
        return self._running.process.stderr_tail(lines)

    # -- requests ----------------------------------------------------------------

    async def attach(self, resource_id: str, properties: dict[str, Any] | None = None) -> None:
        """Attach ``resource_id`` with ``properties``, checked against the
        manifest's schema first: ``PropertyErrors`` lists every problem, as
        ``drivebayctl resource add`` would. ``OperationFailed`` when the
        driver's ``attach`` raised."""
        checked = self._validated(properties or {}, self.manifest)
        await self._running.process.attach(resource_id, checked)
        self.resources[resource_id] = checked

    async def detach(self, resource_id: str) -> None:
        await self._running.process.detach(resource_id)
        self.resources.pop(resource_id, None)

    async def call(self, resource_id: str, operation: str, /, **args: Any) -> Any:
        """The result of ``operation(**args)`` on the instance for ``resource_id``.

        Raises ``OperationFailed`` (the driver raised: ``type_name``,
        ``traceback``), ``CallTimeout`` past the manifest's (or the
        default) call deadline, ``DriverCrashed`` when the process died."""
        return await self._running.process.call(resource_id, operation, args)

    async def call_with(
        self,
        resource_id: str,
        operation: str,
        args: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        """``call`` with the arguments as a dict and a deadline of your own."""
        return await self._running.process.call(resource_id, operation, args, timeout)

    async def health(self) -> dict[str, Any]:
        """The driver's health report; ``OperationFailed`` when it is not ok."""
        return await self._running.process.health()

    async def upgrade(self, bundle: str | Path) -> None:
        """Move every attached resource to another version of the bundle.

        The new version starts beside the old one and must be healthy; each
        resource's properties are checked against the new schema, then each
        resource moves as the daemon moves it: when the old class has
        ``handoff`` and the new one ``takeover``, its state and sockets are
        handed over (``takeover`` instead of ``attach``, the old instance
        detached only after it returned); otherwise it is attached on the
        new version and detached from the old one. The old process stops
        last. When the new version fails (start, health, an attach or a
        takeover), the resources already handed over are handed back (the
        old version's ``takeover`` gets the newer ``from_version``), the
        one whose takeover failed got ``handoff_aborted``, the new version
        is stopped, the old one keeps serving every resource, and the error
        is raised (``HandoverFailed`` for a state that did not move).
        """
        old, old_stack = self._running, self._stack
        new, new_stack = await self._start(Path(bundle))
        old_version, new_version = old.bundle.manifest.version, new.bundle.manifest.version
        decided = plan(old.process.hooks, new.process.hooks)
        if decided is Plan.DROP:
            log.warning(
                "%s has no takeover: the state of each resource is dropped (attach instead)",
                new.process.name,
            )
        with_state = decided is Plan.STATE
        moved: list[str] = []  # handed over with their state: handed back on failure
        try:
            await new.process.health()
            checked = {
                rid: self._validated(props, new.bundle.manifest)
                for rid, props in self.resources.items()
            }
            for resource_id, properties in checked.items():
                if with_state:
                    await move_state(old.process, new.process, resource_id, properties, old_version)
                    moved.append(resource_id)
                else:
                    await new.process.attach(resource_id, properties)
        except BaseException:
            for resource_id in reversed(moved):
                properties = self.resources[resource_id]
                await move_state(new.process, old.process, resource_id, properties, new_version)
            await new_stack.aclose()  # its Drain detaches what it took
            raise
        self.resources.update(checked)
        self._current, self._stack = new, new_stack
        self.bundle_path = Path(bundle)
        try:
            for resource_id in checked:
                if resource_id not in moved:  # a handed-over one is detached already
                    await old.process.detach(resource_id)
        finally:
            await old_stack.aclose()

    @staticmethod
    def _validated(properties: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
        return validate(manifest.properties, properties, driver=manifest.name)


class DriverHarness:
    """``AsyncDriverHarness`` for plain (sync) tests: the same methods, blocking.

    The driver's conversation runs on an event loop in a thread of its own,
    started by ``with`` and ended (child stopped and reaped, thread joined)
    when the block ends.
    """

    def __init__(self, bundle: str | Path, settings: RunSettings | None = None) -> None:
        self.harness = AsyncDriverHarness(bundle, settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DriverHarness:
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="drivebay-harness", daemon=True
        )
        self._thread.start()
        try:
            self._run(self.harness.__aenter__())
        except BaseException:
            self._close_loop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._run(self.harness.__aexit__(kind, exc, tb))
        finally:
            self._close_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RequestError("the harness is not running; use it inside its with block")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def _close_loop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    # -- the same facts and requests, blocking -----------------------------------------

    @property
    def events(self) -> list[tuple[str, str, Any]]:
        return self.harness.events

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.harness.resources

    @property
    def manifest(self) -> Manifest:
        return self.harness.manifest

    @property
    def version(self) -> str:
        return self.harness.version

    @property
    def operations(self) -> dict[str, OperationInfo]:
        return self.harness.operations

    def stderr_tail(self, lines: int = 10) -> str:
        return self.harness.stderr_tail(lines)

    def attach(self, resource_id: str, properties: dict[str, Any] | None = None) -> None:
        self._run(self.harness.attach(resource_id, properties))

    def detach(self, resource_id: str) -> None:
        self._run(self.harness.detach(resource_id))

    def call(self, resource_id: str, operation: str, /, **args: Any) -> Any:
        return self._run(self.harness.call(resource_id, operation, **args))

    def call_with(
        self, resource_id: str, operation: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        return self._run(self.harness.call_with(resource_id, operation, args, timeout))

    def health(self) -> dict[str, Any]:
        return self._run(self.harness.health())

    def upgrade(self, bundle: str | Path) -> None:
        self._run(self.harness.upgrade(bundle))


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop, as the daemon runs on, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def bundle_above(path: Path) -> Path:
    """The nearest directory at or above ``path`` holding ``driver.yaml``.

    Raises ``RequestError`` when there is none."""
    for candidate in (path, *path.parents):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    raise RequestError(
        f"no {MANIFEST_FILE} in {path} or above it; override the driver_bundle fixture "
        "to return your bundle's path"
    )


try:
    import pytest
except ImportError:  # the harness works without pytest; the fixtures need it
    pass
else:

    @pytest.fixture
    def driver_bundle(request: pytest.FixtureRequest) -> Path:
        """The bundle under test: the nearest directory above the test file
        holding ``driver.yaml``. Override it to test another bundle."""
        return bundle_above(request.path.parent)

    @pytest.fixture
    def driver(driver_bundle: Path) -> Iterator[DriverHarness]:
        """``driver_bundle`` running in a real driver process (``DriverHarness``)."""
        with DriverHarness(driver_bundle) as harness:
            yield harness
