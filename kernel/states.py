"""The lifecycle of a driver version, as data: states, allowed moves, history.

Every driver version the kernel knows is in exactly one ``State``. Moves not
in ``TRANSITIONS`` are kernel bugs and raise ``IllegalTransition``. Every move
is logged and kept (the last 50) for ``drivebayctl describe``.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.errors import KernelError

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


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.BUILDING, S.STARTING, S.BLOCKED, S.INVALID, S.FAILED}),
    S.BUILDING: frozenset({S.STARTING, S.FAILED, S.STOPPED, S.BACKOFF}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.FAILED, S.STOPPING, S.STOPPED}),
    S.RUNNING: frozenset({S.STOPPING, S.DRAINING, S.STARTING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPING, S.STOPPED, S.RUNNING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.BUILDING, S.FATAL, S.STOPPED}),
    S.FATAL: frozenset({S.BUILDING, S.STARTING, S.STOPPED}),
    S.BLOCKED: frozenset({S.BUILDING, S.STARTING, S.STOPPED, S.BLOCKED}),
    S.INVALID: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.BUILDING, S.STARTING, S.STOPPED}),
}

# States where starting has come to rest, for better or worse.
SETTLED_OK = frozenset({S.RUNNING, S.FATAL, S.FAILED, S.BLOCKED, S.BACKOFF, S.INVALID, S.STOPPED})

# States in which `status` exits 3 (supervisorctl: "not running" states).
NOT_RUNNING = frozenset({S.STOPPED, S.FATAL, S.INVALID, S.BLOCKED, S.FAILED})


class IllegalTransition(KernelError):
    """A move the lifecycle table does not allow: a bug in the kernel."""


@dataclass(frozen=True)
class Transition:
    at: float  # wall-clock seconds
    source: State
    target: State
    reason: str


class Lifecycle:
    """The state of one driver version and how it got there."""

    def __init__(self, name: str, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.state = State.STOPPED
        self.reason = "Not started"
        self.since = clock()
        self.history: collections.deque[Transition] = collections.deque(maxlen=50)
        self._clock = clock
        self._listeners: list[Callable[[State], None]] = []

    def move(self, target: State, reason: str = "") -> None:
        """Enter ``target``; raises IllegalTransition if the table forbids it."""
        source = self.state
        if target not in TRANSITIONS[source]:
            raise IllegalTransition(f"{self.name}: {source} -> {target} is not allowed")
        now = self._clock()
        self.history.append(Transition(now, source, target, reason))
        self.state, self.reason, self.since = target, reason, now
        level = logging.WARNING if target in (S.FATAL, S.FAILED, S.BACKOFF) else logging.INFO
        log.log(level, "%s entered %s%s", self.name, target, f" ({reason})" if reason else "")
        for listener in list(self._listeners):
            listener(target)

    def listen(self, listener: Callable[[State], None]) -> Callable[[], None]:
        """Call ``listener`` after every move; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
