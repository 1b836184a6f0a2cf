"""The control socket's bounds: what one client, or many, may hold of the daemon.

Each connection is a descriptor, so their number is capped (``ConnectionGate``:
``control.max_connections``, lowered to what the descriptor limit leaves for
clients); the kernel holds one gate, and the control socket's connections
and the HTTP API's (``kernel/httpapi/gate.py``) count against it together.
A request is buffered until its last byte arrives; one announced over
``SMALL_REQUEST`` must first reserve its size in a ``RequestBudget``
shared by all connections (``control.request_buffer_mb``), so twenty clients
announcing 16 MiB each cannot make the daemon hold 320 MiB: the ones the budget
cannot take are refused from their length prefix, before their bytes arrive.
A request must also arrive whole within ``timeouts.request_s`` (the server's
timer). Plain objects with no I/O: the server consults them, tests drive them.
"""

from __future__ import annotations

SMALL_REQUEST = 64 * 1024  # received without asking the budget: every status, most calls
MIB = 1024 * 1024


class ConnectionGate:
    """Counts the open client connections (control socket and HTTP API) against a cap.

    ``descriptor_limit`` is the RLIMIT_NOFILE the cap was lowered for, when
    that, not ``control.max_connections``, is what binds (None otherwise).
    """

    def __init__(self, cap: int, descriptor_limit: int | None = None) -> None:
        self.cap = cap
        self.open = 0
        self.descriptor_limit = descriptor_limit

    def enter(self) -> bool:
        """Admit one more connection (True), or refuse it (False; nothing counted)."""
        if self.open >= self.cap:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        """An admitted connection closed."""
        self.open -= 1

    @property
    def refusal(self) -> str:
        """The one line a refused client gets (drivebayctl prints it and exits 1)."""
        if self.descriptor_limit is not None:
            return (
                f"drivebayd has {self.cap} client connections open, all that its descriptor "
                f"limit {self.descriptor_limit} (RLIMIT_NOFILE) leaves for clients; close idle "
                "clients or raise LimitNOFILE"
            )
        return (
            f"drivebayd has {self.cap} client connections open (control socket and HTTP API "
            "together: control.max_connections); close idle clients or raise "
            "control.max_connections"
        )


class RequestBudget:
    """Bytes reserved by the large requests being received, over all connections."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes (True), or refuse because they are not left (False)."""
        if self.in_use + size > self.total:
            return False
        self.in_use += size
        return True

    def give(self, size: int) -> None:
        """Return what ``take`` reserved."""
        self.in_use -= size

    def refusal(self, size: int) -> str:
        """The line a client gets whose request of ``size`` bytes does not fit."""
        return (
            f"request of {size} bytes refused: drivebayd is already receiving "
            f"{self.in_use} bytes of large requests, and control.request_buffer_mb allows "
            f"{self.total // MIB} MiB; retry, send less, or raise control.request_buffer_mb"
        )


def wanted(announced: int) -> int:
    """What a request announcing ``announced`` bytes must reserve in the budget."""
    return announced if announced > SMALL_REQUEST else 0


def stalled(request_s: float) -> str:
    """The line a client gets whose request did not arrive whole in time."""
    return (
        f"request incomplete after {request_s:g}s (timeouts.request_s); "
        "closing: send each request whole"
    )
