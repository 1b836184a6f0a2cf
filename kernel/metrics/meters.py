"""What the kernel counts as it runs, in plain numbers: no exporter, no locks.

Counting a call is on every call's path (the actor's reply callback), so it
costs a dict lookup, two list increments, a ``bisect`` and a float addition;
``prometheus_client``'s own Counter and Histogram take a lock per increment
and a label lookup per call. Everything here is touched on the event loop
only; a scrape copies it there (``exposition.take_snapshot``) and formats
the copy in a worker thread.

Label sets stay bounded: an operation the loaded driver class does not have
(its ``Ready`` message lists them) is counted as ``other``, and nothing is
labelled by resource.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from drivebay.protocol.errors import CallTimeout, DriverCrashed, DriverHung

# How a call ended, as an index into a counts row (the hot path adds 1 there):
# answered; the operation raised; its deadline passed; the driver died (or was
# killed as hung) with it in flight; the kernel gave up on it (the resource
# went away); never sent (arguments the driver's codec cannot take).
OK, ERROR, TIMEOUT, CRASHED, CANCELLED, REFUSED = range(6)
OUTCOMES = ("ok", "error", "timeout", "crashed", "cancelled", "refused")
OTHER = "other"  # the operation label of every name the driver class lacks

CALL_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
HANDOVER_BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ENV_BUILD_BOUNDS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def outcome_of(exc: BaseException) -> int:
    """How a sent call failed, as an ``OUTCOMES`` index."""
    if isinstance(exc, CallTimeout):
        return TIMEOUT
    if isinstance(exc, (DriverCrashed, DriverHung)):
        return CRASHED
    return ERROR  # OperationFailed: the operation raised


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class CallMeter:
    """The calls of one driver version: counts by operation and outcome,
    and one duration histogram (by version only: a histogram per operation
    would multiply the series by every operation of every driver)."""

    __slots__ = ("_other", "_rows", "buckets", "driver", "seconds", "version")

    def __init__(self, driver: str, version: str) -> None:
        self.driver = driver
        self.version = version
        self._other = [0] * len(OUTCOMES)
        self._rows: dict[str, list[int]] = {OTHER: self._other}
        # The duration histogram, flat (one attribute less per call): counts
        # per CALL_BOUNDS bucket, not cumulative, the last +Inf; their sum.
        self.buckets = [0] * (len(CALL_BOUNDS) + 1)
        self.seconds = 0.0

    def know(self, operations: Iterable[str]) -> None:
        """The operations of the loaded class (``Ready.operations``): each
        gets its own label; any other name counts as ``other``."""
        for name in operations:
            self._rows.setdefault(name, [0] * len(OUTCOMES))

    def record(self, op: str, outcome: int, seconds: float) -> None:
        """A call sent to the driver has ended (the hot path)."""
        row = self._rows.get(op)
        if row is None:
            row = self._other
        row[outcome] += 1
        self.buckets[bisect_left(CALL_BOUNDS, seconds)] += 1
        self.seconds += seconds

    def count(self, op: str, outcome: int) -> None:
        """A call that never reached the driver (``refused``, or ``crashed``
        when the process was already gone): counted, not timed."""
        row = self._rows.get(op)
        if row is None:
            row = self._other
        row[outcome] += 1

    def rows(self) -> dict[str, list[int]]:
        """A copy of the counts: operation -> counts by ``OUTCOMES`` index."""
        return {op: list(row) for op, row in self._rows.items()}


class Metrics:
    """Everything the kernel counts, owned by the ``Kernel``.

    ``count_calls`` (the config's ``metrics.enabled``) decides whether driver
    versions get a ``CallMeter``: the one part with a cost per call."""

    def __init__(self, count_calls: bool = True) -> None:
        self.count_calls = count_calls
        self.meters: dict[str, CallMeter] = {}  # by name@version
        self.upgrades: dict[str, int] = {}  # by driver: handovers to a newer version
        self.rollbacks: dict[str, int] = {}  # by driver: a new version given up on
        self.handovers: dict[str, Histogram] = {}  # by driver: time to switch every resource
        self.env_builds = Histogram(ENV_BUILD_BOUNDS)  # virtualenvs built (not found ready)

    def meter(self, driver: str, version: str) -> CallMeter | None:
        """The meter of ``driver`` ``version`` (shared by all its processes);
        None when calls are not counted."""
        if not self.count_calls:
            return None
        key = f"{driver}@{version}"
        meter = self.meters.get(key)
        if meter is None:
            meter = self.meters[key] = CallMeter(driver, version)
        return meter

    def forget_except(self, keep: Iterable[str]) -> None:
        """Drop the meters of versions that are gone (their series end)."""
        kept = set(keep)
        for key in [key for key in self.meters if key not in kept]:
            del self.meters[key]

    def handed_over(self, driver: str, seconds: float, ok: bool, upgrade: bool) -> None:
        """A handover ended (an upgrade, or a process replaced for new
        settings): its duration; for an upgrade, an upgrade when it held
        and a rollback when it failed."""
        histogram = self.handovers.get(driver)
        if histogram is None:
            histogram = self.handovers[driver] = Histogram(HANDOVER_BOUNDS)
        histogram.observe(seconds)
        if upgrade and ok:
            self.upgrades[driver] = self.upgrades.get(driver, 0) + 1
        elif upgrade:
            self.rolled_back(driver)

    def rolled_back(self, driver: str) -> None:
        self.rollbacks[driver] = self.rollbacks.get(driver, 0) + 1

    def env_built(self, seconds: float) -> None:
        self.env_builds.observe(seconds)
