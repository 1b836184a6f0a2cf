"""A TCP port forwarder: one listening socket per resource, relayed to a target.

Each accepted connection opens its own connection to ``target_host:target_port``
and copies bytes both ways until both sides have finished. A half-close
(EOF from one side) is passed on, so request/response protocols that shut down
their write side still work. ``bytes_in`` counts client -> target bytes,
``bytes_out`` target -> client bytes.

An upgrade, pin or property change moves the forwarder to a new instance
without a seam: ``handoff`` stops accepting and relaying and returns the
listening socket, every connection's two sockets and the bytes read but not
yet written; ``takeover`` continues each stream from there (``tcp_relay.py`` says
why nothing can be in flight). Standard library only; the relays are the
event loop's reader and writer callbacks, and the only tasks are the
connections to the target being made, which the forwarder owns and cancels.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from tcp_listener import Listener
from tcp_relay import Pair
from tcp_sockets import bind, connect, resolve

log = logging.getLogger("tcp_forward")

CONNECT_TIMEOUT_S = 10.0
STATE_FORMAT = 1  # of the dict handoff returns; takeover refuses another one


def _port(properties: dict[str, Any], key: str, lowest: int) -> int:
    """The property ``key`` as a TCP port number; ValueError says how to fix it."""
    value = properties.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        raise ValueError(
            f"{key} must be a whole number from {lowest} to 65535, got {value!r}; "
            "fix the resource's properties"
        )
    return value


def _host(properties: dict[str, Any], key: str, default: str | None = None) -> str:
    value = properties.get(key, default)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(
            f"{key} must be a host name or address of 1 to 255 characters, got {value!r}; "
            "fix the resource's properties"
        )
    return value


@dataclass
class Connection:
    """One relayed client connection and its byte counts; ``pair`` is None
    while the connection to the target is being made."""

    id: int
    peer: str
    client: socket.socket
    opened: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    pair: Pair | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "open_s": round(time.monotonic() - self.opened, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    def state(self, now: float) -> dict[str, Any]:
        """What a takeover needs to continue this connection (sockets included)."""
        relay = self.pair.state() if self.pair is not None else {}
        return {
            "id": self.id,
            "peer": self.peer,
            "open_s": now - self.opened,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "client": self.client,
            "upstream": self.pair.upstream if self.pair is not None else None,
            **relay,
        }

    def close(self) -> None:
        """Close our sockets (close() only: a copy in another process lives on)."""
        if self.pair is not None:
            self.pair.release()
        else:
            self.client.close()


class TcpForward:
    """Forwards ``listen_host:listen_port`` to ``target_host:target_port``.

    ``listen_port`` 0 lets the system choose a free port; ``stats()`` reports
    the port actually bound.
    """

    @classmethod
    async def health(cls) -> dict[str, Any]:
        """Always ok: a forwarder depends on nothing outside its own process."""
        return {"ok": True}

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.listen_host = _host(properties, "listen_host", "127.0.0.1")
        self.listen_port = _port(properties, "listen_port", 0)
        self.target_host = _host(properties, "target_host")
        self.target_port = _port(properties, "target_port", 1)
        self._listener: Listener | None = None
        self._open: dict[int, Connection] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}  # connection id -> its connect
        self._held = False  # handed off: relay and accept nothing until aborted
        self._accepted = 0
        self._failed = 0
        self._bytes_in = 0
        self._bytes_out = 0

    async def attach(self) -> None:
        """Start listening. Raises OSError when the address cannot be bound
        (port in use, or not allowed below 1024 without privileges)."""
        self._listener = Listener(await bind(self.listen_host, self.listen_port), self._accept)
        self._listener.start()
        log.info(
            "%s: forwarding %s:%d to %s:%d",
            self.resource_id,
            self.listen_host,
            self._listener.port,
            self.target_host,
            self.target_port,
        )

    async def detach(self) -> None:
        """Stop listening and close our copy of every socket. After a handoff
        the new instance holds the same sockets, and every connection lives on."""
        await self._hold()
        for connection in list(self._open.values()):
            connection.close()
        self._open.clear()
        if self._listener is not None:
            self._listener.sock.close()
            self._listener = None

    # -- handover ---------------------------------------------------------------

    async def handoff(self) -> dict[str, Any]:
        """Stop accepting and relaying; the listener, the connections and the
        bytes read but not yet written, for the new instance's ``takeover``."""
        await self._hold()
        listener = self._listener
        if listener is None:
            raise RuntimeError(f"{self.resource_id}: nothing to hand off before attach")
        now = time.monotonic()  # once: a clock read is not free on every machine
        connections = [connection.state(now) for connection in self._open.values()]
        held = sum(
            len(c[d]["pending"]) for c in connections for d in ("inbound", "outbound") if d in c
        )
        log.debug(  # not info: a line per resource and upgrade would flood the daemon's log
            "%s: handing off %d connections (%d bytes read, not yet written)",
            self.resource_id,
            len(connections),
            held,
        )
        return {
            "format": STATE_FORMAT,
            "listen_host": self.listen_host,
            "listener": listener.sock,
            "counters": {
                "accepted": self._accepted,
                "failed": self._failed,
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
            },
            "connections": connections,
        }

    async def handoff_aborted(self) -> None:
        """The takeover failed: carry on exactly where ``handoff`` stopped."""
        self._held = False
        self._resume()

    async def takeover(self, state: dict[str, Any], from_version: str) -> None:
        """Continue what the instance of ``from_version`` handed off, instead of ``attach``.

        Keeps its listener unless the properties name another address: then
        binds that one first (raising OSError, with nothing taken, when it
        cannot), accepts the clients already waiting on the old one and
        closes it. Raises ValueError for a state this version cannot read.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{self.resource_id}: state format {state.get('format')!r} from "
                f"{from_version} is not {STATE_FORMAT}; upgrade through a version that reads both"
            )
        old: socket.socket = state["listener"]
        kept = state["listen_host"] == self.listen_host and self.listen_port in (
            0,
            old.getsockname()[1],
        )
        now = time.monotonic()
        connections = [self._rebuilt(entry, now) for entry in state["connections"]]
        fresh = None if kept else await bind(self.listen_host, self.listen_port)
        # Nothing below raises: the sockets are ours from here on.
        counters = state["counters"]
        self._accepted, self._failed = counters["accepted"], counters["failed"]
        self._bytes_in, self._bytes_out = counters["bytes_in"], counters["bytes_out"]
        self._open.update((connection.id, connection) for connection in connections)
        if fresh is None:
            self._listener = Listener(old, self._accept)
        else:
            Listener(old, self._accept).accept_queued()
            old.close()
            self._listener = Listener(fresh, self._accept)
        self._resume()
        log.debug(
            "%s: took over %d connections on %s:%d from %s",
            self.resource_id,
            len(connections),
            self.listen_host,
            self._listener.port,
            from_version,
        )

    def _rebuilt(self, entry: dict[str, Any], now: float) -> Connection:
        client: socket.socket = entry["client"]
        connection = Connection(
            entry["id"],
            entry["peer"],
            client,
            now - entry["open_s"],
            entry["bytes_in"],
            entry["bytes_out"],
        )
        upstream: socket.socket | None = entry["upstream"]
        if upstream is not None:
            connection.pair = self._pair(connection, upstream, entry)
        return connection

    async def _hold(self) -> None:
        """Accept and relay nothing more; cancel the connections being made to the target."""
        self._held = True
        if self._listener is not None:
            self._listener.stop()
        for connection in self._open.values():
            if connection.pair is not None:
                connection.pair.pause()
        tasks = list(self._connecting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connecting.clear()  # a task cancelled before it ran never got to its finally

    def _resume(self) -> None:
        for connection in list(self._open.values()):
            if connection.pair is not None:
                connection.pair.resume()
            elif connection.id not in self._connecting:
                self._connect(connection)
        if self._listener is not None:
            self._listener.start()

    # -- operations -------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Counters since the resource was attached (kept across upgrades);
        ``connections`` is the number open now."""
        listener = self._listener
        return {
            "listening": listener is not None and listener.accepting,
            "listen_host": self.listen_host,
            "listen_port": listener.port if listener is not None else self.listen_port,
            "target": f"{self.target_host}:{self.target_port}",
            "connections": len(self._open),
            "accepted": self._accepted,
            "failed": self._failed,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
        }

    async def connections(self) -> list[dict[str, Any]]:
        """The open connections: id, peer address, age and byte counts."""
        return [connection.describe() for connection in self._open.values()]

    # -- relaying ---------------------------------------------------------------

    def _accept(self, client: socket.socket, peer: str) -> None:
        self._accepted += 1
        connection = Connection(self._accepted, peer, client)
        self._open[connection.id] = connection
        self._connect(connection)

    def _connect(self, connection: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._connect_target(connection))
        self._connecting[connection.id] = task
        task.add_done_callback(self._connect_ended)

    def _connect_ended(self, task: asyncio.Task[None]) -> None:
        """A connect task ends by itself; only a bug of ours would leave an error in it."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: relay failed", self.resource_id, exc_info=task.exception())

    async def _connect_target(self, connection: Connection) -> None:
        """Connect to the target, then relay. Cancelled (a handoff, a detach),
        the connection stays without one: whoever carries on connects again."""
        try:
            upstream = await self._open_target()
        except (OSError, TimeoutError) as exc:
            self._failed += 1
            log.warning(
                "%s: cannot reach %s:%d: %s",
                self.resource_id,
                self.target_host,
                self.target_port,
                str(exc) or "timed out",
            )
            del self._open[connection.id]
            connection.client.close()
            return
        finally:
            self._connecting.pop(connection.id, None)
        connection.pair = self._pair(connection, upstream, {})
        if not self._held:
            connection.pair.resume()

    async def _open_target(self) -> socket.socket:
        failure: OSError = OSError(f"no address for {self.target_host}")
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            found = await resolve(self.target_host, self.target_port)
            for family, kind, proto, _, address in found:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    await connect(sock, address)
                except OSError as exc:
                    sock.close()
                    failure = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
        raise failure

    def _pair(self, connection: Connection, upstream: socket.socket, state: dict[str, Any]) -> Pair:
        connection.client.setblocking(False)
        upstream.setblocking(False)
        counted = functools.partial(self._counted, connection)
        ended = functools.partial(self._forget, connection.id)
        return Pair(connection.client, upstream, counted, ended, state)

    def _forget(self, connection_id: int) -> None:
        self._open.pop(connection_id, None)

    def _counted(self, connection: Connection, inbound: bool, count: int) -> None:
        if inbound:
            connection.bytes_in += count
            self._bytes_in += count
        else:
            connection.bytes_out += count
            self._bytes_out += count
