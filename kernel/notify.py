"""systemd's notify protocol, without libsystemd (see ``sd_notify(3)``).

A service started with ``Type=notify`` finds in ``$NOTIFY_SOCKET`` the
address of a datagram socket: a path, or an abstract name when it starts with
``@``. Each message is one datagram of ``KEY=VALUE`` lines (``READY=1``,
``STATUS=…``, ``WATCHDOG=1``, ``EXTEND_TIMEOUT_USEC=…``, ``STOPPING=1``).
``$WATCHDOG_USEC`` asks for ``WATCHDOG=1`` at least that often, from the
process ``$WATCHDOG_PID`` names when set.

Sending never blocks the event loop (a non-blocking socket) and never fails
the daemon: a socket that is full, gone or refusing is logged once per run of
failures and the message is dropped, as libsystemd's callers do. Without
``$NOTIFY_SOCKET`` the ``Notifier`` does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("drivebay.notify")

# Read once and removed from the daemon's environment: nothing it spawns (uv,
# drivers) may take the daemon's place towards systemd.
VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The ``AF_UNIX`` address ``$NOTIFY_SOCKET`` names: ``@name`` is the
    abstract ``\\0name``; an absolute path is itself; anything else (a
    relative path, a ``vsock:`` address) is not one we can send to."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def format_message(fields: Mapping[str, object]) -> bytes:
    """One datagram: a ``KEY=VALUE`` line per field. A value is one line
    (newlines become spaces), so a status text cannot add a field."""
    lines = []
    for key, value in fields.items():
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode("utf-8", "backslashreplace")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as
    ``sd_watchdog_enabled(3)`` advises; ``None`` when the watchdog is off or
    meant for another process (``$WATCHDOG_PID``)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return usec / 2e6


class Notifier:
    """Sends messages to systemd's notify socket; does nothing without one."""

    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self._failing = False
        self._socket: socket.socket | None = None
        if address is None:
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("cannot notify systemd: no socket (%s); carrying on without", exc)
            self.watchdog_s = None
            return
        sock.setblocking(False)
        self._socket = sock

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """The notifier ``environ`` asks for; its variables are removed from
        ``environ`` (``sd_notify``'s ``unset_environment``)."""
        found = {name: environ.pop(name) for name in VARIABLES if name in environ}
        value = found.get("NOTIFY_SOCKET")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET=%r is not an address drivebayd can send to; ignored", value)
        return cls(address, watchdog_interval(found, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> bool:
        """Send one message; ``False`` when there is no socket or it was not sent."""
        if self._socket is None:
            return False
        assert self.address is not None
        try:
            self._socket.sendto(format_message(fields), self.address)
        except OSError as exc:  # full (EAGAIN), gone (ENOENT), refused: not ours to fix
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot notify systemd (%s); dropping its messages until it takes them again",
                    exc.strerror or exc,
                )
            return False
        if self._failing:
            self._failing = False
            log.info("notifying systemd again")
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
