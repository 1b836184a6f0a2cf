"""What a reload (``drivebayctl reload``, SIGHUP) does with each setting.

One table, ``EFFECTS``, says for every top-level key of the config how a new
value takes effect:

- ``LIVE``: read where it is used, or pushed to the running slots by the
  reload (``DriverSlot.reconfigure``): the next decision, deadline, check or
  build uses it, in running drivers too.
- ``RESPAWN``: spawned into a driver process (its environment, rlimits, log
  files, channel): running versions are handed over to a fresh process with
  the new value, as in an upgrade (``spawn_settings`` is what is compared).
- ``RESTART``: fixed when the daemon starts; a reload keeps the old value and
  says so (``keep_fixed``).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from drivebay.kernel.config import Config


class Effect(enum.Enum):
    LIVE = "live"
    RESPAWN = "respawn"
    RESTART = "restart"


EFFECTS: dict[str, Effect] = {
    "state_dir": Effect.RESTART,  # the lock, the database, the pid records live there
    "drivers_dir": Effect.RESTART,  # watched from the start
    "socket": Effect.RESTART,  # bound at start
    "socket_group": Effect.RESTART,  # the socket's mode and group are set when it is made
    "envs_dir": Effect.RESTART,  # running envs live there; collecting would remove them
    "mailbox_size": Effect.RESTART,  # every resource's mailbox is sized when it is made
    "control": Effect.RESTART,  # client bounds are worked out from the fd limit at start
    "http": Effect.RESTART,  # its sockets are bound, and TLS files read, at start
    "metrics": Effect.RESTART,  # its listener is bound, and call meters given out, at start
    "cluster": Effect.RESTART,  # a node joins (or not) at start; its leases run on these timings
    "uv_cache_dir": Effect.LIVE,
    "category_order": Effect.LIVE,
    "settle_s": Effect.LIVE,
    "handover_moves": Effect.LIVE,  # read at each handover
    "same_version_change": Effect.LIVE,
    "restart": Effect.LIVE,
    "timeouts": Effect.LIVE,
    "bundles": Effect.LIVE,
    "trust": Effect.LIVE,  # checked on each bundle read; a reload reads the drivers dir again
    "repositories": Effect.LIVE,
    "update_check_interval_s": Effect.LIVE,
    "auto_update": Effect.LIVE,
    "log_format": Effect.LIVE,  # the daemon's handler is re-formatted at once
    "events": Effect.LIVE,
    # read on each request; the sockets' mode (0666 when it names others) is set again
    "authorization": Effect.LIVE,  # the ring keeps its newest events at the new size
    "log_level": Effect.RESPAWN,  # the daemon's own level at once, drivers' by a new process
    "python": Effect.RESPAWN,
    "user": Effect.RESPAWN,
    "max_frame_bytes": Effect.RESPAWN,
    "limits": Effect.RESPAWN,
    "logs": Effect.RESPAWN,
    "containment": Effect.RESPAWN,  # how a driver's process tree is held is set at its spawn
    "scheduling": Effect.RESPAWN,  # a driver process sets its policy as it starts
    "spawn": Effect.RESPAWN,  # forked or exec'd: how a process is made, at its spawn
    "drivers": Effect.RESPAWN,
}


def spawn_settings(config: Config, driver: str) -> tuple[Any, ...]:
    """What of ``config`` a process of ``driver`` is spawned with: a running
    process whose value differs is handed over to a new one."""
    return tuple(
        # auto_update is the update check's, read where it is used: not spawned.
        msgspec.structs.replace(config.for_driver(driver), auto_update=None)
        if key == "drivers"
        else getattr(config, key)
        for key, effect in EFFECTS.items()
        if effect is Effect.RESPAWN
    )


def keep_fixed(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the RESTART settings of ``old``, and the names of those
    that differed (a restart of drivebayd applies them)."""
    fixed = [key for key, effect in EFFECTS.items() if effect is Effect.RESTART]
    changed = [key for key in fixed if getattr(old, key) != getattr(new, key)]
    return msgspec.structs.replace(new, **{key: getattr(old, key) for key in fixed}), changed
