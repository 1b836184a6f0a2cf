"""When to restart a driver that died, and when to give up (FATAL).

Pure rules over an injected clock, so tests run them without waiting. Like
supervisord: a process that exits within ``startsecs`` of starting failed to
start, and is retried after an exponentially growing, jittered delay; one
that ran longer is restarted at once. Either way, more than ``max_restarts``
restarts within ``window_s`` ends in FATAL. FATAL is tried again after
``fatal_retry_initial_s``, doubling with each FATAL that follows a retry up
to ``fatal_retry_max_s`` (as Kubernetes retries a crash loop); ``None`` keeps
it FATAL until an operator's start or a new bundle. The policy is read anew
at every decision, so a reload reaches drivers that are already running.
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
    # FATAL is retried after this long, doubling up to fatal_retry_max_s;
    # None: FATAL stays until an operator's start or a new bundle.
    fatal_retry_initial_s: float | None = 10.0
    fatal_retry_max_s: float = 300.0

    def backoff(self, failures: int) -> float:
        """The delay after ``failures`` failed tries in a row (0: the first), unjittered."""
        growth = self.backoff_factor ** min(failures, 64)
        return min(self.backoff_initial_s * growth, self.backoff_max_s)


class RestartTracker:
    """Counts one driver's failures and says how long to wait before the next try."""

    def __init__(
        self,
        policy: Callable[[], RestartPolicy],
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._restarts: collections.deque[float] = collections.deque()
        self._failed_starts = 0
        self._fatal_streak = 0  # FATALs since the last retry that held
        self._retried_at: float | None = None  # the last retry out of FATAL
        self.total = 0

    @property
    def policy(self) -> RestartPolicy:
        """The policy now (a reload may have changed it since the last exit)."""
        return self._policy()

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
        delay = self.policy.backoff(self._failed_starts)
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
        self._fatal_streak = 0
        self._retried_at = None

    def fatal_retry_delay(self) -> float | None:
        """On entering FATAL: how long until it is tried again, or None to
        stay FATAL (``fatal_retry_initial_s: null``). The delay doubles with
        each FATAL that follows a retry, up to ``fatal_retry_max_s``; a retry
        that held for ``fatal_retry_max_s`` starts the doubling over."""
        policy = self.policy
        if policy.fatal_retry_initial_s is None:
            return None
        held = self._retried_at is not None and (
            self._clock() - self._retried_at >= policy.fatal_retry_max_s
        )
        if held:
            self._fatal_streak = 0
        growth = 2.0 ** min(self._fatal_streak, 32)
        self._fatal_streak += 1
        return min(policy.fatal_retry_initial_s * growth, policy.fatal_retry_max_s)

    def retry_fatal(self) -> None:
        """The FATAL retry is due: a fresh round of restarts; the streak stays,
        so the next FATAL waits twice as long."""
        self._restarts.clear()
        self._failed_starts = 0
        self._retried_at = self._clock()
