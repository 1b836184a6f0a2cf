"""Unix peers' roles, looked up off the event loop and kept a short while.

A peer's role (``authz.peer_role``) needs its user name and the groups that
name it (``getpwuid``, ``getgrnam``): through NSS, which may ask LDAP or sssd
and block for seconds. ``PeerRoles.role`` runs that lookup in a worker thread
and waits at most ``LOOKUP_S`` for it (``TimeoutError`` then: the caller
refuses the client with ``slow_lookup``); connections of the same peer at
once share one lookup. An answer is kept ``TTL_S`` for at most
``MAX_PEERS`` peers (the oldest goes first), and only for the config it was
found under: a reload is applied at the next connection. Root and the
daemon's own user need no lookup. Both the control socket and the HTTP API's
Unix socket ask here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivebay.kernel.control.authz import Role, owner, peer_role
from drivebay.protocol.errors import DrivebayError

if TYPE_CHECKING:
    from drivebay.kernel.config import Config

TTL_S = 30.0  # how long a peer's role is kept: a change of its groups counts after that
MAX_PEERS = 256  # peers whose roles are kept at once
LOOKUP_S = 10.0  # for the user and group database to answer

Lookup = Callable[[int, int, "Config"], Role | None]
Key = tuple[int, int]


class PeerLookupTimeout(DrivebayError):
    """The user or group database did not answer in time (NSS: sssd, LDAP)."""


def slow_lookup(uid: int, timeout_s: float) -> str:
    """The line a peer is refused with when its lookup took too long."""
    return (
        f"drivebayd could not look up uid {uid}'s user and groups within {timeout_s:g}s "
        "(the name service: NSS, sssd, LDAP); check it and retry"
    )


class PeerRoles:
    """The roles of Unix peers by (uid, gid), found in a worker thread."""

    def __init__(
        self,
        lookup: Lookup = peer_role,
        ttl_s: float = TTL_S,
        size: int = MAX_PEERS,
        timeout_s: float = LOOKUP_S,
    ) -> None:
        self._lookup = lookup
        self.ttl_s = ttl_s
        self.size = size
        self.timeout_s = timeout_s
        self._config: Config | None = None  # the config the kept roles were found under
        self._kept: OrderedDict[Key, tuple[float, Role | None]] = OrderedDict()
        self._pending: dict[tuple[Key, int], asyncio.Future[Role | None]] = {}  # by config id

    async def role(self, uid: int, gid: int, config: Config) -> Role | None:
        """The peer's role (None: no rule names it); TimeoutError after
        ``timeout_s`` without an answer from the user database."""
        if owner(uid):
            return Role.admin
        if config is not self._config:
            self._kept.clear()
            self._config = config
        key = (uid, gid)
        kept = self._kept.get(key)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        future = self._pending.get((key, id(config)))
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, self._lookup, uid, gid, config)
            self._pending[(key, id(config))] = future
            future.add_done_callback(functools.partial(self._found, key, config))
        async with asyncio.timeout(self.timeout_s):
            return await asyncio.shield(future)  # a waiter's end leaves it to the others

    def _found(self, key: Key, config: Config, future: asyncio.Future[Role | None]) -> None:
        """Keep a lookup's answer (under the config it was found for)."""
        self._pending.pop((key, id(config)), None)
        if future.cancelled() or future.exception() is not None:
            return  # the waiters see the error; nothing is kept
        if config is not self._config:
            return
        self._kept[key] = (time.monotonic() + self.ttl_s, future.result())
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
