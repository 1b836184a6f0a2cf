"""When to try again a bundle that could not be taken for a reason not its own.

Reading or storing a bundle can fail because of the host: a full disk, an
I/O error, a busy file, no memory, a state dir that cannot be written for a
while. Such a bundle is tried again after a delay that doubles with each
failure in a row (``initial_s``, capped at ``max_s``), so it becomes usable
once the cause goes, without a restart. A bundle's own faults
(``BundleError``) are not retried: they are final until the bundle changes.
Pure rules over an injected clock, so tests run them without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0


class LoadRetries(Generic[K]):
    """The failures in a row of each key (a bundle's path) and their next try."""

    def __init__(
        self, policy: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._failures: dict[K, int] = {}
        self._due: dict[K, float] = {}

    def failed(self, key: K) -> float:
        """``key`` failed again: the delay before its next try."""
        count = self._failures.get(key, 0)
        delay = min(self.policy.initial_s * self.policy.factor**count, self.policy.max_s)
        self._failures[key] = count + 1
        self._due[key] = self._clock() + delay
        return delay

    def forget(self, key: K) -> None:
        """``key`` was taken, refused for its own fault, changed or removed."""
        self._failures.pop(key, None)
        self._due.pop(key, None)

    def due(self) -> set[K]:
        """The keys whose next try is now."""
        now = self._clock()
        return {key for key, at in self._due.items() if at <= now}

    def waiting(self, key: K) -> bool:
        return key in self._due

    def next_in(self) -> float | None:
        """Seconds until the earliest next try (0 when one is due); None: none waits."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self._clock())
