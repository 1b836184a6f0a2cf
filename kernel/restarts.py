"""When to restart a driver that died, and when to give up (FATAL).

Pure rules over an injected clock, so tests run them without waiting. Like
supervisord: a process that exits within ``startsecs`` of starting failed to
start, and is retried after an exponentially growing, jittered delay; one
that ran longer is restarted at once. Either way, more than ``max_restarts``
restarts within ``window_s`` ends in FATAL.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable

import msgspec


class RestartPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backoff_initial_s: float = 0.5
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    jitter: float = 0.1  # +/- this fraction of the delay
    max_restarts: int = 5
    window_s: float = 60.0
    startsecs: float = 1.0
    # Keep a pre-started child per running driver (runtime imported, driver code
    # not loaded): a restart after a crash then takes milliseconds, not the
    # ~100 ms of a new interpreter. Costs one idle process per driver.
    spare: bool = True


class RestartTracker:
    """Counts one driver's failures and says how long to wait before the next try."""

    def __init__(
        self,
        policy: RestartPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng
        self._restarts: collections.deque[float] = collections.deque()
        self._failed_starts = 0
        self.total = 0

    def next_delay(self, ran_for: float | None) -> float | None:
        """After an exit (``ran_for`` seconds after start; None: it never got
        running), the delay before restarting, or None to give up (FATAL)."""
        now = self._clock()
        window = self.policy.window_s
        while self._restarts and now - self._restarts[0] > window:
            self._restarts.popleft()
        if len(self._restarts) >= self.policy.max_restarts:
            return None
        self._restarts.append(now)
        self.total += 1
        if ran_for is not None and ran_for >= self.policy.startsecs:
            self._failed_starts = 0
            return 0.0
        delay = min(
            self.policy.backoff_initial_s * self.policy.backoff_factor**self._failed_starts,
            self.policy.backoff_max_s,
        )
        self._failed_starts += 1
        spread = delay * self.policy.jitter
        return max(0.0, delay + spread * (2 * self._rng() - 1))

    def loop_began(self) -> float | None:
        """When the oldest restart still inside the window happened (None: none)."""
        return self._restarts[0] if self._restarts else None

    def reset(self) -> None:
        """An operator started it, or a new bundle arrived: forget past failures."""
        self._restarts.clear()
        self._failed_starts = 0
