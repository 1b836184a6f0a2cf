"""How many driver versions and control connections the descriptor limit allows.

Everything the daemon holds open counts against its ``RLIMIT_NOFILE``: per
driver process (measured with ``/proc/PID/fd``, 10 and 30 drivers alike) its
channel socket, the pipes of its stdout and stderr, its pidfd and its two log
files (opened at its first output: a spare holds 4); a driver version with its
warm spare holds at most twice that, and the budget counts that worst case. At start
drivebayd raises its soft limit to the hard one (systemd's default soft limit
of 1,024 exists for programs that use ``select``; the daemon uses epoll), then
works out from the limit how many driver versions fit beside a reserve for
itself (stdio, event loop, control socket, state store, lock, watcher, an
environment build) and the control connections. A driver version beyond that
stays STOPPED with one line naming the limit, instead of failing at random
when a descriptor cannot be had. Pure functions of the limit, but for the two
that read and raise it.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivebay.kernel.drivers.lifecycle import State

if TYPE_CHECKING:
    from drivebay.kernel.config import Config

FDS_PER_PROCESS = 6  # socket, stdout and stderr pipes, pidfd, two log files
RESERVED_FDS = 64  # the daemon's own (21 when idle) and transient ones (builds, starts)
CLIENT_SHARE = 8  # control connections get at most 1/8 of what the reserve leaves

# States in which a driver version holds its place (and, mostly, its
# descriptors): whatever is started or on its way to be. A stopped, blocked,
# invalid or failed version holds none and passes admission again to start.
HOLDS_PLACE = frozenset(State) - {State.STOPPED, State.BLOCKED, State.INVALID, State.FAILED}


def places_held(states: Iterable[State]) -> int:
    """How many of the driver versions in ``states`` hold a place."""
    return sum(1 for state in states if state in HOLDS_PLACE)


@dataclass(frozen=True)
class DescriptorBudget:
    """What the descriptor ``limit`` allows."""

    limit: int
    per_driver: int  # descriptors of one driver version, its spare included
    drivers: int  # driver versions that may run at once
    connections: int  # control connections that may be open at once
    connections_capped: bool  # the limit, not control.max_connections, binds

    def summary(self) -> str:
        """The line drivebayd logs at start."""
        return (
            f"descriptor limit {self.limit} (RLIMIT_NOFILE): room for {self.drivers} driver "
            f"versions ({self.per_driver} descriptors each) and {self.connections} control "
            "connections"
        )

    def refusal(self) -> str:
        """Why a driver version beyond ``drivers`` is not started (status, describe)."""
        return (
            f"not started: the descriptor limit {self.limit} (RLIMIT_NOFILE) allows "
            f"{self.drivers} driver versions; raise LimitNOFILE (or the hard nofile limit "
            "of drivebayd's user) and restart drivebayd"
        )

    def admits(self, holding: int) -> bool:
        """May one more version start while ``holding`` versions hold a place?"""
        return holding < self.drivers


def descriptor_budget(limit: int, max_connections: int, spare: bool) -> DescriptorBudget:
    """Share ``limit`` descriptors between the daemon, its clients and drivers."""
    per_driver = FDS_PER_PROCESS * (2 if spare else 1)
    left = max(0, limit - RESERVED_FDS)
    for_clients = max(1, left // CLIENT_SHARE)
    connections = min(max_connections, for_clients)
    drivers = max(0, left - connections) // per_driver
    return DescriptorBudget(
        limit=limit,
        per_driver=per_driver,
        drivers=drivers,
        connections=connections,
        connections_capped=for_clients < max_connections,
    )


def open_files_over(config: Config, hard: int) -> list[str]:
    """Warnings for ``open_files`` settings above the daemon's ``hard`` limit:
    a driver cannot raise its hard limit, so those drivers would fail to start."""
    settings = {"limits.open_files": config.limits.open_files}
    for name, driver in config.drivers.items():
        if driver.limits is not None:
            settings[f"drivers.{name}.limits.open_files"] = driver.limits.open_files
    return [
        f"{key}: {value} is above drivebayd's hard descriptor limit {hard}, which a driver "
        f"cannot raise: its drivers fail to start; lower it, or raise LimitNOFILE"
        for key, value in settings.items()
        if value is not None and value > hard
    ]


def current_limit() -> int:
    """The soft RLIMIT_NOFILE now (a huge number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft)


def raise_soft_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns (before, after, hard).

    Children get their own ``limits.open_files`` (1,024 by default) at spawn;
    only with ``open_files: null`` do they inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # Fails when the kernel's nr_open is below the hard limit: keep the soft one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    after, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft), _finite(after), _finite(hard)


def _finite(value: int) -> int:
    return 1 << 30 if value == resource.RLIM_INFINITY else value
