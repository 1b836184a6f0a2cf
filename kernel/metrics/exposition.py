"""``/metrics``: the kernel's state and counts in Prometheus' text format.

``render_metrics(kernel)`` is the one entry point (the HTTP API's
``GET /metrics`` and the optional listener of ``metrics.listen`` both call
it). It copies what it needs from the kernel on the event loop
(``take_snapshot``: slots, actors, meters; no I/O), then reads ``/proc`` and
formats the text with ``prometheus_client`` in a worker thread, so neither a
slow ``/proc`` nor a large exposition holds up the loop, and the thread never
touches the kernel's live objects.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

import drivebay
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.metrics.meters import CALL_BOUNDS, OUTCOMES, Histogram

if TYPE_CHECKING:
    from drivebay.kernel.kernel import Kernel


@dataclass(frozen=True)
class SlotSample:
    driver: str
    version: str
    state: str
    restarts: int
    started_at: float | None  # epoch seconds of the running process's start; None: not running
    pid: int | None


@dataclass(frozen=True)
class HistogramSample:
    bounds: tuple[float, ...]
    counts: list[int]
    total: float

    @classmethod
    def of(cls, histogram: Histogram) -> HistogramSample:
        return cls(histogram.bounds, list(histogram.counts), histogram.total)


@dataclass
class Snapshot:
    """What a scrape shows of the kernel, copied on the event loop."""

    slots: list[SlotSample] = field(default_factory=list)
    # (driver, version) -> operation -> counts by OUTCOMES index
    calls: dict[tuple[str, str], dict[str, list[int]]] = field(default_factory=dict)
    durations: dict[tuple[str, str], HistogramSample] = field(default_factory=dict)
    mailbox: dict[tuple[str, str], int] = field(default_factory=dict)  # queued operations
    resources: dict[tuple[str, str], int] = field(default_factory=dict)
    upgrades: dict[str, int] = field(default_factory=dict)
    rollbacks: dict[str, int] = field(default_factory=dict)
    handovers: dict[str, HistogramSample] = field(default_factory=dict)
    env_builds: HistogramSample | None = None
    bundles: dict[str, int] = field(default_factory=dict)  # by verdict

    def only(self, sees: Callable[[str], bool]) -> Snapshot:
        """The series of the drivers ``sees`` accepts, and the daemon-wide ones."""

        def pairs(found: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
            return {key: value for key, value in found.items() if sees(key[0])}

        def named(found: dict[str, Any]) -> dict[str, Any]:
            return {key: value for key, value in found.items() if sees(key)}

        return Snapshot(
            slots=[slot for slot in self.slots if sees(slot.driver)],
            calls=pairs(self.calls),
            durations=pairs(self.durations),
            mailbox=pairs(self.mailbox),
            resources=pairs(self.resources),
            upgrades=named(self.upgrades),
            rollbacks=named(self.rollbacks),
            handovers=named(self.handovers),
            env_builds=self.env_builds,
            bundles=self.bundles,
        )


def take_snapshot(kernel: Kernel) -> Snapshot:
    """Copy the kernel's figures (on the event loop; no I/O)."""
    metrics = kernel.metrics
    now = time.time()
    snapshot = Snapshot()
    # A version being replaced by a fresh process of its own (new settings)
    # is both serving and retiring for a moment: one series, the serving one.
    slots = list({slot.name: slot for slot in reversed(kernel.all_slots())}.values())
    for slot in slots:
        uptime = slot.uptime
        snapshot.slots.append(
            SlotSample(
                slot.manifest.name,
                slot.manifest.version,
                str(slot.state),
                slot.restarts.total,
                None if uptime is None else now - uptime,
                slot.pid,
            )
        )
        snapshot.mailbox[(slot.manifest.name, slot.manifest.version)] = 0
        snapshot.resources[(slot.manifest.name, slot.manifest.version)] = 0
    metrics.forget_except(slot.name for slot in slots)
    for meter in metrics.meters.values():
        key = (meter.driver, meter.version)
        snapshot.calls[key] = meter.rows()
        snapshot.durations[key] = HistogramSample(CALL_BOUNDS, list(meter.buckets), meter.seconds)
    if kernel.book is not None:
        for actor in kernel.book.actors.values():
            bound = actor.bound
            key = (actor.driver, bound.manifest.version if bound is not None else "")
            snapshot.mailbox[key] = snapshot.mailbox.get(key, 0) + actor.queued
            snapshot.resources[key] = snapshot.resources.get(key, 0) + 1
    snapshot.upgrades = dict(metrics.upgrades)
    snapshot.rollbacks = dict(metrics.rollbacks)
    snapshot.handovers = {d: HistogramSample.of(h) for d, h in metrics.handovers.items()}
    snapshot.env_builds = HistogramSample.of(metrics.env_builds)
    snapshot.bundles = {"valid": 0, "invalid": 0, "pending": 0}
    registry = kernel.registry
    for entry in registry.entries.values():
        if registry.verdict(entry) is not None:
            verdict = "invalid"
        elif entry.bundle is not None:
            verdict = "valid"
        else:
            verdict = "pending"
        snapshot.bundles[verdict] += 1
    return snapshot


async def render_metrics(
    kernel: Kernel, accept: str | None = None, sees: Callable[[str], bool] | None = None
) -> tuple[bytes, str]:
    """The exposition and its content type, in the format the request's
    ``Accept`` header asks for, as ``prometheus_client``'s own servers
    choose it: Prometheus' text format 0.0.4 by default, OpenMetrics or text
    1.0.0 when asked. With ``sees`` (a token limited to drivers), only the
    series of the drivers it accepts, and the daemon-wide ones."""
    snapshot = take_snapshot(kernel)
    if sees is not None:
        snapshot = snapshot.only(sees)
    return await asyncio.to_thread(render, snapshot, accept or "")


def render(snapshot: Snapshot, accept: str = "", proc: str = "/proc") -> tuple[bytes, str]:
    """Format ``snapshot``, with the driver processes read from ``proc`` and
    the daemon's own from /proc (worker thread: it reads files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, proc))
    ProcessCollector(namespace="", registry=registry)  # the daemon's own process_*
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


@dataclass(frozen=True)
class ProcSample:
    rss_bytes: int
    cpu_seconds: float
    open_fds: int | None  # None: not ours to list (another user, no privilege)


def read_proc(pid: int, proc: str = "/proc") -> ProcSample | None:
    """RSS, CPU time and open descriptors of ``pid``; None when it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces and parentheses: split after its end.
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    try:
        fds: int | None = len(os.listdir(f"{proc}/{pid}/fd"))
    except PermissionError:
        fds = None
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ProcSample(rss, cpu, fds)


class _SnapshotCollector(Collector):
    """The families of one snapshot (a collector for one scrape)."""

    def __init__(self, snapshot: Snapshot, proc: str) -> None:
        self._snapshot = snapshot
        self._proc = proc

    def describe(self) -> list[Metric]:
        return []  # one scrape, one registry: nothing to check names against

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(
            "drivebay_build", "drivebayd's version", value={"version": drivebay.__version__}
        )
        yield from self._drivers()
        yield from self._processes()
        yield from self._calls()
        yield from self._lifecycle_counts()
        yield from self._bundles()

    def _drivers(self) -> Iterator[Metric]:
        labels = ["driver", "version"]
        state = GaugeMetricFamily(
            "drivebay_driver_state",
            "1 for the state each driver version is in, 0 for the others",
            labels=[*labels, "state"],
        )
        restarts = CounterMetricFamily(
            "drivebay_driver_restarts", "Restarts of each driver version", labels=labels
        )
        started = GaugeMetricFamily(
            "drivebay_driver_start_time_seconds",
            "When the running process of each driver version started (Unix time)",
            labels=labels,
        )
        for slot in self._snapshot.slots:
            pair = [slot.driver, slot.version]
            for name in State:
                state.add_metric([*pair, str(name)], 1.0 if slot.state == name else 0.0)
            restarts.add_metric(pair, slot.restarts)
            if slot.started_at is not None:
                started.add_metric(pair, slot.started_at)
        mailbox = GaugeMetricFamily(
            "drivebay_mailbox_depth",
            "Operations queued in the resources' mailboxes, by the version they are bound to",
            labels=labels,
        )
        resources = GaugeMetricFamily(
            "drivebay_resources", "Resources bound to each driver version", labels=labels
        )
        for (driver, version), depth in sorted(self._snapshot.mailbox.items()):
            mailbox.add_metric([driver, version], depth)
            resources.add_metric(
                [driver, version], self._snapshot.resources.get((driver, version), 0)
            )
        yield from (state, restarts, started, mailbox, resources)

    def _processes(self) -> Iterator[Metric]:
        labels = ["driver", "version"]
        rss = GaugeMetricFamily(
            "drivebay_driver_resident_memory_bytes",
            "Resident memory of each driver version's running process",
            labels=labels,
        )
        cpu = CounterMetricFamily(
            "drivebay_driver_cpu_seconds",
            "User and system CPU time of each driver version's running process",
            labels=labels,
        )
        fds = GaugeMetricFamily(
            "drivebay_driver_open_fds",
            "Open file descriptors of each driver version's running process",
            labels=labels,
        )
        for slot in self._snapshot.slots:
            sample = read_proc(slot.pid, self._proc) if slot.pid is not None else None
            if sample is None:
                continue
            pair = [slot.driver, slot.version]
            rss.add_metric(pair, sample.rss_bytes)
            cpu.add_metric(pair, sample.cpu_seconds)
            if sample.open_fds is not None:
                fds.add_metric(pair, sample.open_fds)
        yield from (rss, cpu, fds)

    def _calls(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "drivebay_calls",
            "Operations sent to each driver version, by how they ended",
            labels=["driver", "version", "operation", "outcome"],
        )
        for (driver, version), rows in sorted(self._snapshot.calls.items()):
            for op, counts in sorted(rows.items()):
                for outcome, count in zip(OUTCOMES, counts, strict=True):
                    if count:
                        calls.add_metric([driver, version, op, outcome], count)
        durations = HistogramMetricFamily(
            "drivebay_call_duration_seconds",
            "Time from sending an operation to the driver to its answer",
            labels=["driver", "version"],
        )
        for (driver, version), sample in sorted(self._snapshot.durations.items()):
            durations.add_metric([driver, version], *_buckets(sample))
        yield from (calls, durations)

    def _lifecycle_counts(self) -> Iterator[Metric]:
        upgrades = CounterMetricFamily(
            "drivebay_upgrades", "Handovers to a newer version that held", labels=["driver"]
        )
        for driver, count in sorted(self._snapshot.upgrades.items()):
            upgrades.add_metric([driver], count)
        rollbacks = CounterMetricFamily(
            "drivebay_rollbacks",
            "New versions given up on (a failed handover, or a crash loop on probation)",
            labels=["driver"],
        )
        for driver, count in sorted(self._snapshot.rollbacks.items()):
            rollbacks.add_metric([driver], count)
        handovers = HistogramMetricFamily(
            "drivebay_handover_duration_seconds",
            "Time to move every resource of a driver to another process",
            labels=["driver"],
        )
        for driver, sample in sorted(self._snapshot.handovers.items()):
            handovers.add_metric([driver], *_buckets(sample))
        builds = HistogramMetricFamily(
            "drivebay_env_build_duration_seconds", "Time to build a driver's virtualenv"
        )
        if self._snapshot.env_builds is not None:
            builds.add_metric([], *_buckets(self._snapshot.env_builds))
        yield from (upgrades, rollbacks, handovers, builds)

    def _bundles(self) -> Iterator[Metric]:
        bundles = GaugeMetricFamily(
            "drivebay_bundles",
            "Entries of the drivers dir by verdict (valid, invalid, pending: not read yet)",
            labels=["verdict"],
        )
        for verdict, count in sorted(self._snapshot.bundles.items()):
            bundles.add_metric([verdict], count)
        yield bundles


def _buckets(sample: HistogramSample) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets as HistogramMetricFamily takes them, and the sum."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*sample.bounds, float("inf")], sample.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return buckets, sample.total
