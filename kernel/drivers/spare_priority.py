"""A spare imports at low priority, and only where its priority can be restored.

A warm spare's launch (an interpreter and the runtime's imports, ~100 ms of
CPU) is work nobody waits for, so it runs at ``SPARE_NICE`` above the
daemon's own nice while it imports, and is put back to the daemon's nice once
it has said Hello: when it is taken it becomes the driver, which must run at
normal priority. Putting it back means lowering a nice value, which Linux
allows only with ``CAP_SYS_NICE`` (root, unless a container dropped it) or
within ``RLIMIT_NICE`` (a nice value may go down to ``20 - RLIMIT_NICE``).
Where the daemon cannot do that, spares are not niced at all (a spare left at
nice 10 would become a driver at nice 10); the launch gate
(``launch_gate.py``) keeps them out of the start waves' way either way.

``import_nice`` decides from the three facts (pure); ``for_this_daemon``
reads them once. The renicing itself is ``DriverProcess.launch``'s
(``renice``: the whole process group, so the child's own children too).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

SPARE_NICE = 10  # added to the daemon's nice while a spare imports
CAP_SYS_NICE = 23  # its bit in CapEff


@dataclass(frozen=True)
class ImportNice:
    """Nice values of a spare: ``low`` while it imports, then ``base``."""

    low: int
    base: int


def import_nice(cap_eff: int, rlimit_nice: int, base: int) -> ImportNice | None:
    """The spare's nice values, or None when ``base`` could not be restored
    (no CAP_SYS_NICE and RLIMIT_NICE does not reach down to ``base``)."""
    restorable = bool(cap_eff >> CAP_SYS_NICE & 1) or 20 - rlimit_nice <= base
    low = min(19, base + SPARE_NICE)
    return ImportNice(low, base) if restorable and low > base else None


def for_this_daemon() -> ImportNice | None:
    """``import_nice`` of this process (blocking reads of /proc: call once, at start)."""
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    rlimit = 40 if soft == resource.RLIM_INFINITY else soft  # unlimited: down to -20
    return import_nice(cap_eff, rlimit, os.getpriority(os.PRIO_PROCESS, 0))


def renice(pid: int, nice: int) -> None:
    """Set the nice value of every process (and thread) of the process group
    ``pid`` leads; a child that leads none yet (forked, before its ``setsid``):
    of itself, which what it forks then inherits."""
    try:
        os.setpriority(os.PRIO_PGRP, pid, nice)
    except ProcessLookupError:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
