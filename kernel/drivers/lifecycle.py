"""The lifecycle of a driver version, as data: states, events, the table, history.

Every driver version the kernel knows is in exactly one ``State``. What
happens to it is a named ``Event``; ``TABLE`` says, per state, which events
may happen there and the state each leads to (h11's ``_state.py`` is the
model). An event the table does not list for the current state is a kernel
bug and raises ``IllegalTransition``: callers do not ask first whether a move
is allowed, and nothing is dropped silently. Every move is logged, kept
(the last 50) for ``drivebayctl describe``, and handed to ``on_move`` (the
kernel's event ring) before any listener hears of it.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivebay.kernel.log_format import slot_fields
from drivebay.protocol.errors import KernelError

log = logging.getLogger("drivebay.lifecycle")


class State(enum.StrEnum):
    STOPPED = "STOPPED"
    BUILDING = "BUILDING"  # its virtualenv is being built
    STARTING = "STARTING"  # spawned; handshake and first health check pending
    RUNNING = "RUNNING"
    DRAINING = "DRAINING"  # superseded: its resources are moving to a newer version
    STOPPING = "STOPPING"
    BACKOFF = "BACKOFF"  # failed to start or crashed; waiting before a retry
    FATAL = "FATAL"  # crash loop: left by its retry, `drivebayctl start` or a new bundle
    BLOCKED = "BLOCKED"  # a `requires` is missing, not running, or in a cycle
    INVALID = "INVALID"  # its bundle was rejected
    FAILED = "FAILED"  # failed to build, start, pass health or attach


class Event(enum.StrEnum):
    BUILD = "build"  # its virtualenv is missing: build it
    SPAWN = "spawn"  # a child is spawned (or a spare taken) for it
    UP = "up"  # handshake and health check passed: it serves
    RETIRE = "retire"  # superseded or removed: its resources drain
    STOP = "stop"  # its process is being stopped
    DOWN = "down"  # no process, by request or after an error
    RESET = "reset"  # an operator's start clears FATAL, FAILED or BLOCKED
    REFUSE = "refuse"  # not started: no descriptors for one more version
    BACK_OFF = "back_off"  # failed or crashed: wait, then try again
    GIVE_UP = "give_up"  # a crash loop: FATAL
    BLOCK = "block"  # its requirements are not met
    REJECT = "reject"  # its bundle was rejected
    FAIL = "fail"  # it failed to build, start, pass health or attach: final


S, E = State, Event
TABLE: dict[State, dict[Event, State]] = {
    S.STOPPED: {
        E.BUILD: S.BUILDING,
        E.SPAWN: S.STARTING,
        E.BLOCK: S.BLOCKED,
        E.REJECT: S.INVALID,
        E.FAIL: S.FAILED,
        E.REFUSE: S.STOPPED,  # a new reason why it is not started
    },
    S.BUILDING: {E.SPAWN: S.STARTING, E.FAIL: S.FAILED, E.DOWN: S.STOPPED, E.BACK_OFF: S.BACKOFF},
    S.STARTING: {
        E.UP: S.RUNNING,
        E.BACK_OFF: S.BACKOFF,
        E.GIVE_UP: S.FATAL,
        E.FAIL: S.FAILED,
        E.STOP: S.STOPPING,
        E.DOWN: S.STOPPED,
        E.SPAWN: S.STARTING,  # a failed start retried at once (restart.backoff_initial_s: 0)
    },
    S.RUNNING: {
        E.STOP: S.STOPPING,
        E.RETIRE: S.DRAINING,
        E.SPAWN: S.STARTING,  # restarted at once after a good run
        E.BACK_OFF: S.BACKOFF,
        E.GIVE_UP: S.FATAL,
        E.DOWN: S.STOPPED,
    },
    S.DRAINING: {E.STOP: S.STOPPING, E.DOWN: S.STOPPED, E.UP: S.RUNNING},
    S.STOPPING: {E.DOWN: S.STOPPED},
    S.BACKOFF: {E.SPAWN: S.STARTING, E.BUILD: S.BUILDING, E.GIVE_UP: S.FATAL, E.DOWN: S.STOPPED},
    S.FATAL: {E.BUILD: S.BUILDING, E.SPAWN: S.STARTING, E.DOWN: S.STOPPED, E.RESET: S.STOPPED},
    S.BLOCKED: {
        E.BUILD: S.BUILDING,
        E.SPAWN: S.STARTING,
        E.DOWN: S.STOPPED,
        E.RESET: S.STOPPED,
        E.REFUSE: S.STOPPED,
        E.BLOCK: S.BLOCKED,  # blocked for another reason
    },
    S.INVALID: {E.DOWN: S.STOPPED},
    S.FAILED: {E.BUILD: S.BUILDING, E.SPAWN: S.STARTING, E.DOWN: S.STOPPED, E.RESET: S.STOPPED},
}

# The states each state may move to (derived from TABLE).
TRANSITIONS: dict[State, frozenset[State]] = {
    state: frozenset(row.values()) for state, row in TABLE.items()
}

# The state each event leads to: one per event, whatever the state it happens in.
TARGET: dict[Event, State] = {
    event: target for row in TABLE.values() for event, target in row.items()
}

# Events an operator should notice: logged as warnings.
LOUD = frozenset({E.BACK_OFF, E.GIVE_UP, E.FAIL, E.REFUSE})

# States where starting has come to rest, for better or worse.
SETTLED_OK = frozenset({S.RUNNING, S.FATAL, S.FAILED, S.BLOCKED, S.BACKOFF, S.INVALID, S.STOPPED})

# States in which `status` exits 3 (supervisorctl: "not running" states).
NOT_RUNNING = frozenset({S.STOPPED, S.FATAL, S.INVALID, S.BLOCKED, S.FAILED})

# Stuck until something changes: an operator's start resets these.
STUCK = frozenset({S.FATAL, S.FAILED, S.BLOCKED})

# Down and not started: where a slot shows why (BLOCKED, or STOPPED refused).
IDLE = frozenset({S.STOPPED, S.BLOCKED})


class IllegalTransition(KernelError):
    """An event the lifecycle table does not allow in the current state: a bug in the kernel."""


@dataclass(frozen=True)
class Transition:
    at: float  # wall-clock seconds
    source: State
    target: State
    reason: str
    exit_code: int | None = None  # the move follows the process's exit with this code


class Lifecycle:
    """The state of one driver version and how it got there."""

    def __init__(
        self,
        name: str,
        clock: Callable[[], float] = time.time,
        on_move: Callable[[Transition], None] | None = None,
    ) -> None:
        self.name = name
        self.state = State.STOPPED
        self.reason = "Not started"
        self.since = clock()
        self.history: collections.deque[Transition] = collections.deque(maxlen=50)
        self._clock = clock
        self._listeners: list[Callable[[State], None]] = []
        self._on_move = on_move

    def fire(self, event: Event, reason: str = "", exit_code: int | None = None) -> State:
        """Apply ``event``: enter the state ``TABLE`` gives for it here and
        return it; raises IllegalTransition if the table has no such move.
        ``exit_code``: the move follows the exit of the process with it."""
        source = self.state
        target = TABLE[source].get(event)
        if target is None:
            raise IllegalTransition(
                f"{self.name}: {source} -> {TARGET[event]} is not allowed (event {event})"
            )
        now = self._clock()
        move = Transition(now, source, target, reason, exit_code)
        self.history.append(move)
        self.state, self.reason, self.since = target, reason, now
        level = logging.WARNING if event in LOUD else logging.INFO
        log.log(
            level,
            "%s entered %s%s",
            self.name,
            target,
            f" ({reason})" if reason else "",
            extra=slot_fields(self.name, event.value, state=target.value),
        )
        if self._on_move is not None:
            self._on_move(move)
        for listener in list(self._listeners):
            listener(target)
        return target

    def listen(self, listener: Callable[[State], None]) -> Callable[[], None]:
        """Call ``listener`` after every move; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
