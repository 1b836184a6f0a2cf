"""Who may run a request on the HTTP API: the one hook authorization replaces.

``peer_of`` says who is at the other end of a connection; ``authorize``
raises ``PermissionDenied`` (403) or ``Unauthenticated`` (401) for a request
that peer may not run. The rule is the control socket's: on the Unix socket
(SO_PEERCRED) the daemon's own user, root and members of ``socket_group``; on
TCP, a client whose certificate ``http.tls.client_ca`` verified (tokens and
roles are the authorization's, still to come).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivebay.kernel.control.server import credentials_allowed, peer_credentials
from drivebay.protocol.errors import RequestError

if TYPE_CHECKING:
    from drivebay.kernel.control.schema import ControlRequest
    from drivebay.kernel.kernel import Kernel


class PermissionDenied(RequestError):
    """The peer may not run this request; ask the daemon's operator."""


class Unauthenticated(RequestError):
    """The request came without credentials; present them (a client certificate)."""


@dataclass(frozen=True)
class Peer:
    who: str  # for the log: "pid 12 uid 1000", "tcp 203.0.113.5:40112"
    uid: int | None = None  # a Unix socket peer's (SO_PEERCRED)
    gid: int | None = None
    pid: int | None = None
    certified: bool = False  # TCP: a client certificate http.tls.client_ca verified


def peer_of(transport: Any) -> Peer:
    """Who is at the other end of ``transport`` (an aiohttp request's)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return Peer("gone")
    if sock.family == socket.AF_UNIX:
        pid, uid, gid = peer_credentials(sock)
        return Peer(f"pid {pid} uid {uid}", uid, gid, pid)
    host, port = transport.get_extra_info("peername")[:2]
    return Peer(f"tcp {host}:{port}", certified=bool(transport.get_extra_info("peercert")))


def authorize(kernel: Kernel, peer: Peer, request: ControlRequest) -> None:
    """Return if ``peer`` may run ``request``; raise why not."""
    if peer.uid is not None and peer.gid is not None:
        if credentials_allowed(peer.uid, peer.gid, kernel.config.socket_group):
            return
        raise PermissionDenied(
            "permission denied: this daemon serves its own user, root and socket_group"
        )
    if peer.certified:
        return
    raise Unauthenticated(
        "no credentials: over TCP this daemon serves clients with a certificate "
        "signed by http.tls.client_ca"
    )
