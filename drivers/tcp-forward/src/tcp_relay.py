"""Bytes relayed between two non-blocking sockets, stoppable with every byte accounted for.

A ``Pair`` joins a client socket and an upstream socket with two ``Flow``s
(client -> upstream and upstream -> client), driven by the event loop's
reader and writer callbacks, not by tasks. A flow reads one chunk, writes
what the destination takes, keeps the rest in ``pending`` and reads again
only once ``pending`` is written. So whenever no callback runs, the bytes the
relay holds are exactly the two ``pending`` buffers: ``pause()`` removes every
callback in one synchronous step (nothing can be between a read and
``pending``), ``state()`` describes the pair, and ``resume()`` carries on from
such a description, in this process or in another one that received the
sockets.

An EOF is passed on (``shutdown(SHUT_WR)``) once what came before it is
written; a pair whose two directions have ended, or that fails (a reset),
closes its sockets. ``release()`` closes them too but is for sockets that
live on in another process: it only ever calls ``close()``, which ends
nothing while another process holds the same connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

CHUNK = 64 * 1024
_RETRY = (BlockingIOError, InterruptedError)


class Flow:
    """One direction: bytes from ``src`` to ``dst``."""

    def __init__(
        self,
        pair: Pair,
        src: socket.socket,
        dst: socket.socket,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.pair, self.src, self.dst = pair, src, dst
        state = state or {}
        self.pending = bytearray(state.get("pending", b""))
        self.eof: bool = state.get("eof", False)  # src ended; pass it on once pending is out
        self.shut: bool = state.get("shut", False)  # the EOF was passed on: this flow is over
        self._reading = self._writing = False

    def state(self) -> dict[str, Any]:
        return {"pending": bytes(self.pending), "eof": self.eof, "shut": self.shut}

    def resume(self) -> None:
        """Register what this flow waits for now (nothing once it is over)."""
        if self.shut:
            return
        if self.pending:
            self._want(write=True)
        elif self.eof:
            self._pass_eof()
        else:
            self._want(read=True)

    def pause(self) -> None:
        self._want()

    def _want(self, read: bool = False, write: bool = False) -> None:
        loop = self.pair.loop
        if read != self._reading:
            if read:
                loop.add_reader(self.src.fileno(), self._readable)
            else:
                loop.remove_reader(self.src.fileno())
            self._reading = read
        if write != self._writing:
            if write:
                loop.add_writer(self.dst.fileno(), self._writable)
            else:
                loop.remove_writer(self.dst.fileno())
            self._writing = write

    def _readable(self) -> None:
        try:
            data = self.src.recv(CHUNK)
        except _RETRY:
            return
        except OSError:
            self.pair.fail()
            return
        if not data:
            self.eof = True
            self._want()
            self._pass_eof()
            return
        self.pair.counted(self, len(data))
        self.pending += data
        self._writable()

    def _writable(self) -> None:
        try:
            sent = self.dst.send(self.pending)
        except _RETRY:
            sent = 0
        except OSError:
            self.pair.fail()
            return
        del self.pending[:sent]
        if self.pending:
            self._want(write=True)
        elif self.eof:
            self._want()
            self._pass_eof()
        else:
            self._want(read=True)

    def _pass_eof(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.pair.fail()
            return
        self.shut = True
        self.pair.flow_over()


class Pair:
    """A relayed connection: ``inbound`` client -> upstream, ``outbound`` back.

    ``on_bytes(inbound, count)`` is told of each chunk read; ``on_end()``
    once, when the pair closed itself (both directions over, or a failure).
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        on_bytes: Callable[[bool, int], None],
        on_end: Callable[[], object],
        state: dict[str, Any] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client, self.upstream = client, upstream
        state = state or {}
        self.inbound = Flow(self, client, upstream, state.get("inbound"))
        self.outbound = Flow(self, upstream, client, state.get("outbound"))
        self._on_bytes, self._on_end = on_bytes, on_end
        self.closed = False

    def state(self) -> dict[str, Any]:
        return {"inbound": self.inbound.state(), "outbound": self.outbound.state()}

    def resume(self) -> None:
        self.inbound.resume()
        self.outbound.resume()
        self.flow_over()  # a pair handed over with both directions over ends here

    def pause(self) -> None:
        self.inbound.pause()
        self.outbound.pause()

    def counted(self, flow: Flow, count: int) -> None:
        self._on_bytes(flow is self.inbound, count)

    def flow_over(self) -> None:
        if self.inbound.shut and self.outbound.shut and not self.closed:
            self._close()

    def fail(self) -> None:
        """A reset or error on either side ends the connection: close both sockets."""
        if not self.closed:
            self._close()

    def release(self) -> None:
        """Stop and close our copies of the sockets; another process may carry on with them."""
        self.pause()
        self.closed = True
        self.client.close()
        self.upstream.close()

    def _close(self) -> None:
        self.release()
        self._on_end()
