"""The client of drivebayd's control socket: drivebay's public API for programs.

``Client`` blocks; ``AsyncClient`` runs on asyncio and carries many requests
at once on one connection. Both offer ``connect``, ``open``, ``request``,
``stream``, ``call``, ``replies`` and ``close``, and are context managers.
Every error they raise is a ``DrivebayError``; see docs/client.md.

``AsyncClient`` is imported on first use: the rest of this package is
standard library only, so ``drivebayctl status`` starts without msgspec or
asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivebay.client._errors import (
    ConnectionLost,
    DaemonUnavailable,
    NotDrivebayd,
    OperationError,
)
from drivebay.client._sync import Client, Reply
from drivebay.protocol.errors import DrivebayError, RequestError

if TYPE_CHECKING:
    from drivebay.client._async import AsyncClient
    from drivebay.kernel.config_search import control_socket

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectionLost",
    "DaemonUnavailable",
    "DrivebayError",
    "NotDrivebayd",
    "OperationError",
    "Reply",
    "RequestError",
    "control_socket",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from drivebay.client._async import AsyncClient

        return AsyncClient
    if name == "control_socket":  # pathlib: not for a client given its socket
        from drivebay.kernel.config_search import control_socket

        return control_socket
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
