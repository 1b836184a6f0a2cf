"""A listening socket that accepts through the event loop's reader callback.

``Listener`` accepts from a socket made by ``tcp_sockets.bind`` while started
and hands each client to a callback. ``stop()`` is one synchronous step: the
socket stays open, clients that connect meanwhile wait in its backlog, and
whoever holds the socket next (this instance again, or a new one in another
process) accepts them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("tcp_forward")

ACCEPT_BATCH = 64  # clients accepted per wake-up, so a flood cannot starve the relays
OUT_OF_DESCRIPTORS_PAUSE_S = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Listener:
    """Accepts from ``sock`` while started; ``on_client(sock, peer)`` gets each client."""

    def __init__(
        self, sock: socket.socket, on_client: Callable[[socket.socket, str], None]
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._on_client = on_client
        self._loop = asyncio.get_running_loop()
        self._accepting = False
        self._pause: asyncio.TimerHandle | None = None  # out of descriptors: try again later

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        if not self._accepting and self._pause is None:
            self._loop.add_reader(self.sock.fileno(), self._acceptable)
            self._accepting = True

    def stop(self) -> None:
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        if self._accepting:
            self._loop.remove_reader(self.sock.fileno())
            self._accepting = False

    def accept_queued(self) -> None:
        """Accept every client waiting in the backlog now, without listening on."""
        self._accept(limit=None)

    def _acceptable(self) -> None:
        self._accept(limit=ACCEPT_BATCH)

    def _accept(self, limit: int | None) -> None:
        accepted = 0
        while limit is None or accepted < limit:
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES and self._accepting:
                    log.warning("cannot accept (%s); trying again in 1 s", exc.strerror)
                    self.stop()
                    self._pause = self._loop.call_later(OUT_OF_DESCRIPTORS_PAUSE_S, self._retry)
                    return
                log.warning("cannot accept a client: %s", exc)
                return
            accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_client(client, f"{address[0]}:{address[1]}")

    def _retry(self) -> None:
        self._pause = None
        self.start()
