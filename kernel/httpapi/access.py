"""Who is asking on the HTTP API, for the one policy (``kernel/control/authz.py``).

``peer_of`` says who is at the other end of a request: on the Unix socket
the peer SO_PEERCRED names, judged as on the control socket, once per
connection (``Peers``: the peer of a connection never changes; it is judged
again after a reload replaced the config); on TCP the bearer token of its
``Authorization`` header (401 without a known one), else the admin page's
session cookie (``sessions.py``), else 401. A client certificate
(``http.tls.client_ca``) authenticates the connection only: it grants no
role, so a TCP request still needs a token or a session.
``authorize`` raises ``PermissionDenied`` (403) for a request that peer may
not run, and audits the refusal.
"""

from __future__ import annotations

import socket
import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web

from drivebay.kernel.control import authz
from drivebay.kernel.control.authz import PermissionDenied, Principal, Unauthenticated
from drivebay.kernel.control.peers import PeerLookupTimeout, slow_lookup
from drivebay.kernel.events import audit_what
from drivebay.kernel.httpapi.sessions import SESSIONS, Session, principal_of

if TYPE_CHECKING:
    from drivebay.kernel.config import Config
    from drivebay.kernel.control.schema import ControlRequest
    from drivebay.kernel.kernel import Kernel

Peer = Principal
__all__ = [
    "Peer",
    "Peers",
    "PermissionDenied",
    "Unauthenticated",
    "authorize",
    "live_session",
    "peer_of",
    "still_known",
]


class Peers:
    """The principal of each Unix connection, by its transport, with the config
    it was judged by: SO_PEERCRED and the user and group look-ups once per
    connection rather than per request. An entry goes with its connection."""

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[Any, tuple[Config, Principal]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, transport: Any, config: Config) -> Principal | None:
        try:
            found = self._known.get(transport)
        except TypeError:  # a TLS transport takes no weak reference: never a Unix peer
            return None
        return found[1] if found is not None and found[0] is config else None

    def put(self, transport: Any, config: Config, principal: Principal) -> None:
        self._known[transport] = (config, principal)


async def peer_of(
    kernel: Kernel, request: web.BaseRequest, peers: Peers | None = None
) -> Principal:
    """Who sent ``request``; Unauthenticated for a TCP client without a
    token the daemon knows or a live session. A Unix peer's role is looked
    up off the loop (``peers.py``; PeerLookupTimeout, 503, when NSS hangs);
    with ``peers``, a Unix connection's peer is judged once (per config)."""
    transport: Any = request.transport
    if transport is None:
        return Principal("gone", None)
    config = kernel.config
    principal = peers.get(transport, config) if peers is not None else None
    if principal is None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return Principal("gone", None)
        if sock.family != socket.AF_UNIX:
            return _tcp_peer(kernel, request, transport)
        pid, uid, gid = authz.peer_credentials(sock)
        try:
            role = await kernel.peers.role(uid, gid, config)
        except TimeoutError:
            raise PeerLookupTimeout(slow_lookup(uid, kernel.peers.timeout_s)) from None
        principal = Principal(f"pid {pid} uid {uid}", role)
        if peers is not None:
            peers.put(transport, config, principal)
    if principal.role is None:
        raise PermissionDenied(authz.refusal(principal))
    return principal


def _tcp_peer(kernel: Kernel, request: web.BaseRequest, transport: Any) -> Principal:
    """A TCP client: by its token, its certificate or its session; judged per request."""
    host, port = transport.get_extra_info("peername")[:2]
    who = f"tcp {host}:{port}"
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        known = kernel.tokens.known(kernel.config)
        return authz.token_principal(who, token.strip(), known)
    session = live_session(kernel, request)
    if session is not None:
        return principal_of(session, request)
    raise Unauthenticated(
        "no credentials: over TCP send a token (Authorization: Bearer TOKEN, from "
        "drivebayctl token new) or log in on the admin page; a client certificate "
        "alone grants no role"
    )


def live_session(kernel: Kernel, request: web.BaseRequest) -> Session | None:
    """The request's admin page session, its role and globs as its token now
    has them (a reload may change them); Unauthenticated, and the session
    ended, once that token is gone (``token rm``, or out of the config)."""
    store = request.app.get(SESSIONS) if isinstance(request, web.Request) else None
    session = store.find(request) if store is not None else None
    if session is None or session.principal.token is None:
        return session
    rule = kernel.tokens.find(kernel.config, session.principal.token)
    if rule is None:
        assert store is not None
        store.close(request)
        raise Unauthenticated(
            "the token this session was opened with was removed: log in again with a known token"
        )
    session.principal = authz.of_token(session.principal.who, rule)
    return session


def still_known(kernel: Kernel, peer: Principal) -> bool:
    """Is the token ``peer`` came with (if any) still one the daemon accepts?
    An open stream asks before each chunk: a removed token's stream ends."""
    return peer.token is None or kernel.tokens.find(kernel.config, peer.token) is not None


def authorize(kernel: Kernel, peer: Principal, request: ControlRequest) -> None:
    """Return if ``peer`` may run ``request``; raise PermissionDenied (audited)."""
    try:
        authz.authorize(kernel, peer, request)
    except PermissionDenied as exc:
        kernel.events.audit(peer.who, audit_what(request), f"refused: {exc}")
        raise
