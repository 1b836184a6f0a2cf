"""Supervision of one driver version: build, start, check, restart, stop.

A ``DriverSlot`` owns one driver version's lifecycle and, while it runs, its
``DriverProcess``. Its task (owned by the kernel) loops: bring the process up
(BUILDING -> STARTING -> first health check -> RUNNING), serve until the
process exits or an operator command arrives, and on an unexpected exit apply
the restart rules (immediate restart after a good run, exponential BACKOFF
after a failed start, FATAL after a crash loop, a retry out of FATAL after a
growing delay). While it runs it keeps a warm spare child, pinged while idle
and replaced when it dies, freezes or cannot be made; a candidate (a new
version on probation) launches its spare only once it serves, so the spare's
start (an interpreter and its imports: ~100 ms of CPU) does not compete with
the handover to it. Every launch, a start's or a spare's, waits its turn
at the kernel's ``LaunchGate`` (a few starts at a time, spares only once
no start wave runs). Operators reach it
through ``start``/``stop``/``restart``, which return once the target state is
reached; a reload reaches it through ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from drivebay.kernel.config import Config, TimeoutSettings
from drivebay.kernel.drivers.launch_gate import Kind, LaunchGate, bounds_for, usable_cpus
from drivebay.kernel.drivers.lifecycle import IDLE, STUCK, Event, Lifecycle, State, Transition
from drivebay.kernel.drivers.process import DriverProcess, EventHandler
from drivebay.kernel.drivers.restarts import RestartTracker
from drivebay.kernel.drivers.spare_priority import ImportNice
from drivebay.kernel.log_format import slot_fields
from drivebay.kernel.metrics.meters import CallMeter
from drivebay.kernel.reloading import spawn_settings
from drivebay.protocol.errors import DriverError, DriverStartError, EnvBuildError, RequestError
from drivebay.sandbox.bundles import StoredBundle
from drivebay.sandbox.cancel_safe import wait_until_done
from drivebay.sandbox.fork_server import Templates
from drivebay.sandbox.privileges import RunAs, preflight
from drivebay.sandbox.spawn import SpawnSpec, describe_exit

log = logging.getLogger("drivebay.supervisor")

T = TypeVar("T")

SETTLED = frozenset(
    {State.RUNNING, State.FATAL, State.FAILED, State.BLOCKED, State.INVALID, State.STOPPED}
)


class Goal(enum.Enum):
    RUN = "run"
    STOP = "stop"


@dataclass(frozen=True)
class SlotContext:
    """What every slot needs from the kernel."""

    current_config: Callable[[], Config]  # the kernel's config now (reloads change it)
    runtime_dir: Path
    prepare: Callable[[StoredBundle], Awaitable[tuple[Path, str]]]  # -> (python, env key)
    on_spawn: Callable[[str, int], None]  # (slot name, pid): record for stale cleanup
    on_reap: Callable[[str, int | None], None]  # (slot name, pid): forget that record
    on_event: Callable[[str, str, str, Any], None]  # (slot, resource, event, data)
    # Monotonic seconds: uptime, retry deadlines, probation and the restart
    # rules all read this one clock (tests pass their own).
    clock: Callable[[], float] = time.monotonic
    # Makes the slot's processes (tests pass an in-memory one with the same interface).
    new_process: Callable[[SpawnSpec, TimeoutSettings, EventHandler], DriverProcess] = DriverProcess
    # Every move of a slot's lifecycle, before its listeners hear of it (the event ring).
    on_move: Callable[[DriverSlot, Transition], None] | None = None
    # Every launch of a process passes it: starts a few at a time, spares after.
    launches: LaunchGate = field(default_factory=lambda: LaunchGate(bounds_for(usable_cpus())))
    on_spare: Callable[[DriverSlot, int], None] | None = None  # (slot, pid): a spare launched
    spare_nice: ImportNice | None = None  # a spare's nice while it imports, then (spare_priority)
    # The templates drivers are forked from with ``spawn: fork-server``.
    templates: Templates | None = None


class DriverSlot:
    """One driver version under supervision."""

    def __init__(self, bundle: StoredBundle, context: SlotContext) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.name = f"{self.manifest.name}@{self.manifest.version}"
        on_move = context.on_move
        self.lifecycle = Lifecycle(
            self.name, on_move=None if on_move is None else functools.partial(on_move, self)
        )
        self.process: DriverProcess | None = None
        self.env_key = ""
        self._ctx = context
        self._goal = Goal.STOP
        self._command = asyncio.Event()
        # The start in progress: an operator's stop cancels it (_unless_stopped).
        self._stoppable: asyncio.Future[Any] | None = None
        self._clock = context.clock
        self.restarts = RestartTracker(lambda: context.current_config().restart, self._clock)
        # When a FATAL slot is tried again: monotonic (for the wait) and
        # wall-clock (for status); None: it stays FATAL.
        self._retry_due: float | None = None
        self._retry_at: float | None = None
        self._reconfigured = asyncio.Event()  # a reload: re-read the health interval
        self._started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._spare: DriverProcess | None = None
        self._spare_task: asyncio.Task[None] | None = None  # _keep_spare
        # From RUNNING until the slot goes down: a reload that comes while a
        # stop awaits (still RUNNING) must not start a spare for it.
        self._spare_wanted = False
        self._spec: SpawnSpec | None = None  # of the running process (for its spares)
        self._retiring = ""
        self._failure = ""
        self._exit_code: int | None = None  # of the process that just ended: the next move's
        self.output_listeners: set[Callable[[str, bytes], None]] = set()
        self.held = False  # an operator stopped it: reconciling must not start it
        # A new version on probation: a failed start is final (FAILED), so the
        # version before it keeps serving and nobody retries a broken bundle.
        self._candidate = False
        # When it took over from the version before it (the slot's clock):
        # the restart window after that is its probation (see took_over).
        self.took_over_at: float | None = None
        # The config settings its process was spawned with (see
        # ``settings_now``): a reload compares them to hand over to a new one.
        self.settings_used: object = None
        self._spare_settings: object = None
        # What a failed replacement of this process was tried with (new
        # settings, or new content of the same version): not retried until
        # the settings or the bundle change again.
        self.refused_settings: object = None
        self.refused_digest: str | None = None
        # Counts this version's calls (None: not counted); the kernel gives
        # it, and every process of the version carries it to the actors.
        self.meter: CallMeter | None = None

    # -- facts for status and describe -------------------------------------------

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def closed(self) -> bool:
        """Removed from service (superseded, bundle gone): route elsewhere."""
        return self._closed

    @property
    def uptime(self) -> float | None:
        if self.state is State.RUNNING and self._started_at is not None:
            return self._clock() - self._started_at
        return None

    @property
    def next_retry_at(self) -> float | None:
        """When this FATAL slot is tried again (epoch seconds); None when it is
        not FATAL or stays FATAL (``restart.fatal_retry_initial_s: null``)."""
        return self._retry_at if self.state is State.FATAL else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.alive else None

    def log_paths(self) -> dict[str, Path]:
        logs = self._ctx.current_config().state_path / "logs"
        return {
            "stdout": logs / f"{self.name}.stdout.log",
            "stderr": logs / f"{self.name}.stderr.log",
        }

    # -- the task ------------------------------------------------------------------

    def launch(self) -> None:
        """Start the supervision task; ``close`` ends it."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"slot {self.name}")

    async def close(self, retire: str = "") -> None:
        """Stop the process (staged: a RUNNING one drains first, shown as
        DRAINING with ``retire`` as the reason) and end the task. A build or
        start in progress is abandoned (cancelled, its child reaped)."""
        self._closed = True
        self._retiring = retire
        self._goal = Goal.STOP
        self._command.set()
        task = self._task
        if task is None:
            return
        if self.state in (State.BUILDING, State.STARTING) and not task.done():
            task.cancel()
        # Not ``await task``: a cancel of our caller would cut the stop short
        # (passed on to the task) and then be swallowed here.
        await wait_until_done(task)
        if not task.cancelled():
            task.result()

    async def _run(self) -> None:
        try:
            while True:
                try:
                    if self._goal is Goal.STOP:
                        await self._down()
                        if self._closed:
                            return
                        await self._wait_command()
                    elif self.state is State.FATAL:
                        await self._wait_fatal()
                    elif self.state in (State.FAILED, State.BLOCKED, State.INVALID):
                        await self._wait_command()
                    else:
                        await self._up_and_serve()
                except Exception as exc:  # a kernel bug or a host problem, not the driver's
                    log.exception("supervision of %s failed", self.name)
                    await self._give_up(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await self._drop_spare()
            if self.process is not None and self.process.alive:
                await self.process.stop()

    def _new_process(self, spec: SpawnSpec) -> DriverProcess:
        on_event = functools.partial(self._ctx.on_event, self.name)
        process = self._ctx.new_process(spec, self._timeouts(), on_event)
        process.meter = self.meter
        return process

    @property
    def candidate(self) -> bool:
        """On probation: a failed start is final, and no spare is launched yet."""
        return self._candidate

    @candidate.setter
    def candidate(self, value: bool) -> None:
        was, self._candidate = self._candidate, value
        if was and not value and self.state is State.RUNNING and self._spec is not None:
            self._prepare_spare(self._spec)  # it serves now: the spare held back

    def _prepare_spare(self, spec: SpawnSpec) -> None:
        """Keep a spare from now on (``_keep_spare``, a task the slot owns);
        a candidate's waits until it serves (``candidate`` set False)."""
        policy = self._ctx.current_config().restart
        keeping = self._spare_task is not None and not self._spare_task.done()
        if not policy.spare or self._closed or keeping or not self._spare_wanted:
            return
        if self._candidate:
            return
        self._spare_task = asyncio.get_running_loop().create_task(
            self._keep_spare(spec), name=f"spare {self.name}"
        )

    async def _keep_spare(self, spec: SpawnSpec) -> None:
        """Keep one spare launched and answering until cancelled. A spare that
        exits, or does not answer a ping within ``timeouts.spare_s`` (frozen),
        is discarded and replaced; one that cannot be launched (no descriptors
        left, say) is tried again after the restart backoff."""
        failures = 0
        while self._ctx.current_config().restart.spare:
            spare = self._spare
            if spare is None:
                try:
                    spare = await self._launch_spare(spec)
                except (DriverError, OSError) as exc:
                    delay = self.restarts.policy.backoff(failures)
                    failures += 1
                    # Loud once; a lasting cause would repeat it every backoff_max_s.
                    level = logging.WARNING if failures == 1 else logging.INFO
                    log.log(
                        level,
                        "%s: no spare process (%s); trying again in %.1fs",
                        self.name,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
            timeouts = self._ctx.current_config().timeouts
            await asyncio.wait([spare.exited], timeout=timeouts.ping_interval_s)
            if not await spare.answers(timeouts.spare_s):
                await self._discard_spare(spare, timeouts.spare_s)
        spare = self._spare  # restart.spare turned off by a reload
        if spare is not None:
            self._ctx.on_reap(f"{self.name}.spare", spare.pid)
            await spare.discard()
            self._spare = None  # only now: a cancel halfway leaves it to _drop_spare

    async def _launch_spare(self, spec: SpawnSpec) -> DriverProcess:
        """Launch a spare once the gate lets it (no start wave in progress)."""
        async with self._ctx.launches.launch(Kind.SPARE):
            spare = self._new_process(spec)
            spare.import_nice = self._ctx.spare_nice
            settings = self.settings_now()
            await spare.launch()
        assert spare.pid is not None
        self._spare, self._spare_settings = spare, settings
        self._ctx.on_spawn(f"{self.name}.spare", spare.pid)
        if self._ctx.on_spare is not None:
            self._ctx.on_spare(self, spare.pid)
        return spare

    async def _discard_spare(self, spare: DriverProcess, spare_s: float) -> None:
        """Kill and reap a spare that died or did not answer in time. It stays
        the slot's spare until reaped: should this be cancelled halfway, whoever
        takes or drops the spare next finishes the job."""
        self._ctx.on_reap(f"{self.name}.spare", spare.pid)
        if spare.alive:
            log.warning(
                "%s: spare pid %s did not answer a ping within %gs; discarded",
                self.name,
                spare.pid,
                spare_s,
            )
            spare.kill_hung(f"spare did not answer a ping within {spare_s:g}s")
        else:
            log.warning("%s: spare pid %s exited; discarded", self.name, spare.pid)
        await spare.discard()
        self._spare = None

    async def _stop_keeping_spare(self) -> None:
        task, self._spare_task = self._spare_task, None
        if task is not None:
            task.cancel()
            await wait_until_done(task)
            if not task.cancelled():
                task.result()

    async def _take_spare(self) -> DriverProcess | None:
        """The spare, if there is one and it answers within ``timeouts.spare_s``
        (a frozen one would hold the restart up for the whole start deadline:
        it is discarded, and the caller starts a fresh child at once)."""
        await self._stop_keeping_spare()
        spare = self._spare
        if spare is None:
            return None
        spare_s = self._ctx.current_config().timeouts.spare_s
        if not await spare.answers(spare_s):
            await self._discard_spare(spare, spare_s)
            return None
        self._spare = None
        self._ctx.on_reap(f"{self.name}.spare", spare.pid)
        spare.timeouts = self._timeouts()  # launched before, maybe under other timeouts
        return spare

    async def _drop_spare(self) -> None:
        self._spare_wanted = False
        await self._stop_keeping_spare()
        spare = self._spare
        if spare is not None:
            self._ctx.on_reap(f"{self.name}.spare", spare.pid)
            await spare.discard()
            self._spare = None

    @property
    def spare_pid(self) -> int | None:
        return self._spare.pid if self._spare is not None and self._spare.alive else None

    def _stop_wanted(self) -> bool:
        """Read anew after every await: a command may have changed it meanwhile."""
        return self._goal is Goal.STOP

    async def _give_up(self, reason: str) -> None:
        """After an unexpected error: stop the process, show FAILED with the reason."""
        if self.process is not None and self.process.alive:
            self._exit_code = await self.process.stop()
            self._reaped()
        if self.state is not State.STOPPED:
            self._fire(Event.DOWN, reason)
        self._fire(Event.FAIL, reason)
        if self._closed:
            self._goal = Goal.STOP

    async def _wait_fatal(self) -> None:
        """FATAL: wait for a command, or until the retry is due; then a fresh
        round of restarts (the next FATAL waits twice as long)."""
        due = self._retry_due
        if await self._wait_command(None if due is None else max(0.0, due - self._clock())):
            return  # the loop sees what the command means
        self._retry_due = self._retry_at = None
        self.restarts.retry_fatal()
        log.info("retrying %s after FATAL", self.name)
        await self._up_and_serve()

    async def _wait_command(self, timeout: float | None = None) -> bool:
        """Wait for an operator command (True) or the timeout (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._command.wait()
        except TimeoutError:
            return False
        self._command.clear()
        return True

    async def _up_and_serve(self) -> None:
        try:
            await self._bring_up()
            if self.state is not State.RUNNING:
                return
        except EnvBuildError as exc:
            self._fire(Event.FAIL, str(exc))
            return
        except DriverError as exc:
            if self.candidate:
                self._fire(Event.FAIL, str(exc))
                return
            await self._after_exit(None, str(exc))
            return
        await self._serve()

    async def _bring_up(self) -> None:
        self._command.clear()
        if not self.env_key:
            self._fire(Event.BUILD, "building its virtualenv")
        python, self.env_key = await self._ctx.prepare(self.bundle)
        if self._stop_wanted():
            return  # stopped while building: the loop takes it down
        self._fire(Event.SPAWN, "")
        spec = self._spec = self._spec_for(python)
        if spec.run_as is not None:
            readable = [self._ctx.runtime_dir, self.bundle.path, spec.cwd]
            preflight(spec.run_as, python, readable)
        settings = self.settings_now()
        process = await self._take_spare()
        if process is None:
            process = await self._unless_stopped(self._launch_start(spec, settings))
            if process is None:
                return  # stopped while waiting its turn or starting: the loop takes it down
        else:
            self.process = process
            self.settings_used = self._spare_settings  # launched before, maybe under other settings
            if await self._unless_stopped(_finished(process)) is None:
                return  # stopped while loading the driver: the loop takes it down
        assert process.pid is not None
        self._ctx.on_spawn(self.name, process.pid)
        if self.meter is not None and process.ready is not None:
            self.meter.know(process.ready.operations)  # before any call reaches it
        try:
            await process.health()
        except DriverError as exc:
            self._exit_code = await process.stop()
            self._reaped()
            raise DriverStartError(f"{self.name} failed its first health check: {exc}") from exc
        self._started_at = self._clock()
        self._fire(Event.UP, f"pid {process.pid}")
        self._spare_wanted = True
        self._prepare_spare(spec)
        if self._stop_wanted():
            self._command.set()  # stopped while starting: _serve returns at once

    async def _launch_start(self, spec: SpawnSpec, settings: object) -> DriverProcess | None:
        """Launch a new process through the gate (a few at a time) and
        complete its handshake; None when stopped while waiting its turn."""
        async with self._ctx.launches.launch(Kind.START):
            if self._stop_wanted():
                return None
            process = self._new_process(spec)
            self.process = process
            self.settings_used = settings
            await process.start()
            return process

    async def _unless_stopped(self, step: Coroutine[Any, Any, T]) -> T | None:
        """Run ``step`` as a task that ``want_stopped`` cancels: a start
        waiting at the launch gate or in its handshake (a slow import) is
        abandoned at once, its child killed and reaped, instead of being
        waited for up to the start deadline; None then. A cancel of ours
        cancels it too."""
        task = self._stoppable = asyncio.ensure_future(step)
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            await wait_until_done(task)
            raise
        finally:
            self._stoppable = None
        return None if task.cancelled() else task.result()

    async def _serve(self) -> None:
        """Until the process exits or a command arrives; checks health meanwhile."""
        process = self.process
        assert process is not None
        while True:
            interval = self._ctx.current_config().timeouts.health_interval_s
            self._reconfigured.clear()
            command = asyncio.ensure_future(self._command.wait())
            reloaded = asyncio.ensure_future(self._reconfigured.wait())
            waits: list[asyncio.Future[Any]] = [process.exited, command, reloaded]
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                command.cancel()
                reloaded.cancel()
            if process.exited.done():
                self._exit_code = await process.wait()
                self._reaped()
                now = self._clock()
                ran_for = now - (self._started_at or now)
                log.warning(
                    "exited: %s (%s; not expected)",
                    self.name,
                    process.exit_reason(),
                    extra=slot_fields(self.name, "exited"),
                )
                await self._after_exit(ran_for, process.exit_reason())
                return
            if done == {reloaded}:
                continue  # the new health interval counts from now
            if done:  # a command: the loop decides what it means
                self._command.clear()
                if self._goal is Goal.STOP:
                    return
                continue
            try:
                await process.health()
            except DriverError as exc:
                log.warning(
                    "%s failed a health check: %s; restarting it",
                    self.name,
                    exc,
                    extra=slot_fields(self.name, "health_failed"),
                )
                await process.stop()

    async def _after_exit(self, ran_for: float | None, reason: str) -> None:
        delay = self.restarts.next_delay(ran_for)
        if delay is None:
            await self._drop_spare()  # a FATAL driver keeps nothing running
            policy = self.restarts.policy
            retry = self.restarts.fatal_retry_delay()
            if retry is not None:
                self._retry_due, self._retry_at = self._clock() + retry, time.time() + retry
            self._fire(
                Event.GIVE_UP,
                f"{reason}; gave up after {policy.max_restarts} restarts within "
                f"{policy.window_s:g}s (drivebayctl start {self.manifest.name} retries)",
            )
            log.error("gave up: %s entered FATAL", self.name, extra=slot_fields(self.name, "fatal"))
            return
        if delay == 0:
            return  # ran long enough: the loop starts it again at once
        self._fire(Event.BACK_OFF, f"{reason}; retrying in {delay:.1f}s")
        if await self._wait_command(delay):
            self._command.set()  # let the loop see the command

    async def _down(self) -> None:
        await self._drop_spare()
        process = self.process
        if process is not None and process.alive:
            if self._retiring and self.state is State.RUNNING:
                self._fire(Event.RETIRE, f"{self._retiring}; draining")
            self._fire(Event.STOP, "")
            code = self._exit_code = await process.stop()
            self._reaped()
            log.info(
                "stopped: %s (%s)",
                self.name,
                describe_exit(code),
                extra=slot_fields(self.name, "stopped"),
            )
        if self._failure:
            reason, self._failure = self._failure, ""
            if self.state is not State.FAILED:
                if self.state is not State.STOPPED:
                    self._fire(Event.DOWN, "Stopped")
                self._fire(Event.FAIL, reason)
            # The fail() that asked for this is served: waiting for the next
            # command must not wake on it and stop the FAILED slot again.
            self._command.clear()
            return
        if self.state is not State.STOPPED:
            self._fire(Event.DOWN, "Stopped")

    def _reaped(self) -> None:
        self._ctx.on_reap(self.name, self.process.pid if self.process is not None else None)

    def _fire(self, event: Event, reason: str) -> None:
        code, self._exit_code = self._exit_code, None
        self.lifecycle.fire(event, reason, code)

    # -- commands ------------------------------------------------------------------

    def want_running(self, reset: bool = False) -> None:
        """Ask for RUNNING; ``reset`` clears FATAL/FAILED/BLOCKED and past failures."""
        if reset:
            self.restarts.reset()
            self._retry_due = self._retry_at = None
            if self.state in STUCK:
                self._fire(Event.RESET, "start requested")
        self._goal = Goal.RUN
        self._command.set()

    def reconfigure(self) -> None:
        """A reload: the new timeouts reach the running process and its spare
        now, the health interval from now; the restart policy is read at each
        decision anyway. ``restart.spare`` turned on starts a spare."""
        timeouts = self._timeouts()
        for process in (self.process, self._spare):
            if process is not None:
                process.timeouts = timeouts
        self._reconfigured.set()
        if self.state is State.RUNNING and self._spec is not None:
            self._prepare_spare(self._spec)

    def settings_now(self) -> object:
        """What of the config a process of this version is spawned with, to
        compare (``kernel.reloading.spawn_settings``)."""
        return spawn_settings(self._ctx.current_config(), self.manifest.name)

    def took_over(self) -> None:
        """It has just taken over from the version before it: on probation from now."""
        self.took_over_at = self._clock()

    def refuse_start(self, reason: str) -> None:
        """No descriptors for one more version: it stays (or goes) STOPPED,
        saying why; the same reason again is no news."""
        if self.state is State.STOPPED and self.lifecycle.reason == reason:
            return
        self._fire(Event.REFUSE, reason)

    def crash_loop_on_probation(self) -> bool:
        """Did the crash loop that ended in FATAL begin within one restart
        window of this version taking over from the one before it?"""
        began = self.restarts.loop_began()
        took_over = self.took_over_at
        return (
            took_over is not None
            and began is not None
            and began - took_over <= self.restarts.policy.window_s
        )

    def stay_failed(self, reason: str) -> None:
        """Before ``launch``: this version failed before the daemon restarted.
        It shows FAILED and waits for an operator's start, as after a failure."""
        self._fire(Event.FAIL, reason)
        self._goal = Goal.RUN

    def fail(self, reason: str) -> None:
        """The kernel gives up on this version (e.g. a resource refused to attach)."""
        self._goal = Goal.STOP
        self._failure = reason
        self._command.set()

    def want_stopped(self) -> None:
        self._goal = Goal.STOP
        self._command.set()
        if self._stoppable is not None:
            self._stoppable.cancel()  # the start is abandoned: see _unless_stopped

    def block(self, reason: str) -> None:
        """Its requirements are not met: stay (or go) down, BLOCKED."""
        if self.state is State.BLOCKED and self.lifecycle.reason == reason:
            return
        if self.process is not None and self.process.alive:
            self.want_stopped()
        if self.state in IDLE:  # one that is up shows BLOCKED once it is down
            self._fire(Event.BLOCK, reason)

    async def next_move(self) -> State:
        """The state this slot enters next (callers bound the wait)."""
        moved: asyncio.Future[State] = asyncio.get_running_loop().create_future()

        def listener(state: State) -> None:
            if not moved.done():
                moved.set_result(state)

        unsubscribe = self.lifecycle.listen(listener)
        try:
            return await moved
        finally:
            unsubscribe()

    async def wait_settled(self, timeout: float, accept: frozenset[State] = SETTLED) -> State:
        """Wait until the state is in ``accept`` (and the loop is idle there)."""
        if self.state in accept:
            return self.state
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[State] = loop.create_future()

        def listener(state: State) -> None:
            if state in accept and not reached.done():
                reached.set_result(state)

        unsubscribe = self.lifecycle.listen(listener)
        try:
            async with asyncio.timeout(timeout):
                return await reached
        except TimeoutError:
            raise RequestError(
                f"{self.name} did not settle within {timeout:g}s (now {self.state})"
            ) from None
        finally:
            unsubscribe()

    # -- building blocks -----------------------------------------------------------

    @property
    def call_timeout(self) -> float:
        """The default deadline of this version's operations."""
        return self._timeouts().call_s

    def _timeouts(self) -> TimeoutSettings:
        """The config's timeouts, with the manifest's own call deadline if it has one."""
        settings = self._ctx.current_config().timeouts
        own = self.manifest.limits.call_timeout_s
        return msgspec.structs.replace(settings, call_s=float(own)) if own else settings

    def _spec_for(self, python: Path) -> SpawnSpec:
        config = self._ctx.current_config()
        settings = config.for_driver(self.manifest.name)
        work = config.state_path / "work" / self.manifest.name
        work.mkdir(parents=True, exist_ok=True)
        user = settings.user or config.user
        run_as = RunAs.lookup(user) if user else None
        if run_as is not None:
            os.chown(work, run_as.uid, run_as.gid)
        logs = self.log_paths()
        return SpawnSpec(
            python=python,
            runtime_dir=self._ctx.runtime_dir,
            entrypoint=self.manifest.entrypoint,
            driver=self.manifest.name,
            version=self.manifest.version,
            cwd=work,
            src=self.bundle.path / "src",
            stdout_log=logs["stdout"],
            stderr_log=logs["stderr"],
            log_max_bytes=config.logs.max_bytes,
            log_backups=config.logs.backups,
            max_frame=config.max_frame_bytes,
            log_level=settings.log_level or config.log_level,
            rlimits=self.rlimits(),
            extra_env=settings.env,
            on_output=self._on_output,
            run_as=run_as,
            containment=config.containment,
            scheduling=config.scheduling,
            templates=self._ctx.templates if config.spawn == "fork-server" else None,
        )

    def _on_output(self, stream: str, data: bytes) -> None:
        for listener in list(self.output_listeners):
            listener(stream, data)

    def rlimits(self) -> dict[str, int]:
        """The manifest's limits over the config's defaults, as RLIMIT_* values."""
        config = self._ctx.current_config()
        defaults = config.for_driver(self.manifest.name).limits or config.limits
        return defaults.rlimits(self.manifest.limits)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "state": str(self.state),
            "message": self.lifecycle.reason,
            "pid": self.pid,
            "restarts": self.restarts.total,
        }


async def _finished(process: DriverProcess) -> DriverProcess:
    """``process`` once its start is finished (a spare taken: it loads the driver)."""
    await process.finish_start()
    return process
