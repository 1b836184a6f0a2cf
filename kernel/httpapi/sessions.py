"""Browser sessions for the admin page (``GET /``) over the TCP listener.

``POST /v1/login`` with a bearer token opens a
session: its id goes to the browser in an HttpOnly, SameSite=Strict cookie,
and the answer names the role and a CSRF token the page sends back in the
``X-CSRF-Token`` header of every changing request (anything but GET and
HEAD). ``GET /v1/session`` names the session's role and CSRF token (``GET /``
carries them in the page);
``POST /v1/logout`` ends the session. Sessions live in the daemon's memory
(a restart ends them) and expire ``TTL_S`` after their last use.
``SESSION_ROUTES`` names these routes and their answers, for the server and
the OpenAPI document alike.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

import msgspec
from aiohttp import web

from drivebay.kernel.control.authz import PermissionDenied, Principal

COOKIE = "drivebay_session"
CSRF_HEADER = "X-CSRF-Token"
TTL_S = 8 * 3600.0
MAX_SESSIONS = 1000  # the oldest goes when a login would exceed it
SAFE = frozenset({"GET", "HEAD"})


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Sessions:
    """The open sessions, by id."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._by_id: dict[str, Session] = {}

    def open(self, principal: Principal) -> tuple[str, Session]:
        now = time.monotonic()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        who = f"{principal.who} session"
        session = Session(
            Principal(who, principal.role, principal.drivers, principal.token),
            secrets.token_urlsafe(32),
            now + self.ttl_s,
        )
        self._by_id[sid] = session
        return sid, session

    def find(self, request: web.BaseRequest) -> Session | None:
        """The request's live session (its expiry moved on), or None."""
        sid = request.cookies.get(COOKIE)
        session = self._by_id.get(sid) if sid else None
        if session is None:
            return None
        now = time.monotonic()
        if session.expires <= now:
            del self._by_id[sid]  # type: ignore[arg-type]
            return None
        session.expires = now + self.ttl_s
        return session

    def close(self, request: web.BaseRequest) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._by_id.pop(sid, None)


class CsrfRefused(PermissionDenied):
    """A changing request of a session without its CSRF token (403); ``who``
    is the session's principal, for the audit line."""

    def __init__(self, who: str) -> None:
        super().__init__(
            f"missing or wrong {CSRF_HEADER} header: reload the admin page and try again"
        )
        self.who = who


def principal_of(session: Session, request: web.BaseRequest) -> Principal:
    """The session's principal; ``CsrfRefused`` for a changing request
    without the session's CSRF token."""
    if request.method not in SAFE:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise CsrfRefused(session.principal.who)
    return session.principal


class SessionAnswer(msgspec.Struct, frozen=True):
    """A session as the page learns it: its role, the CSRF token its
    changing requests send back, and the driver globs a token limits it to
    (null: every driver)."""

    role: str | None
    csrf: str
    drivers: list[str] | None = None


class LoggedOut(msgspec.Struct, frozen=True):
    """The session is closed (and its cookie cleared)."""


def answer_of(session: Session) -> SessionAnswer:
    principal = session.principal
    role = None if principal.role is None else principal.role.name
    drivers = None if principal.drivers is None else list(principal.drivers)
    return SessionAnswer(role, session.csrf, drivers)


@dataclass(frozen=True)
class SessionRoute:
    method: str
    path: str
    name: str  # the audit line's and the problem's word
    answer: type[SessionAnswer | LoggedOut]
    needs: tuple[str, ...]  # all of: bearer (a token), session (the cookie), csrf (its header)
    summary: str


SESSION_ROUTES = (
    SessionRoute(
        "POST",
        "/v1/login",
        "login",
        SessionAnswer,
        ("bearer",),
        f"open a session for the admin page with a token: sets the {COOKIE} cookie "
        "(HttpOnly, SameSite=Strict)",
    ),
    SessionRoute(
        "GET", "/v1/session", "session", SessionAnswer, ("session",), "the session's role and CSRF"
    ),
    SessionRoute(
        "POST",
        "/v1/logout",
        "logout",
        LoggedOut,
        ("session", "csrf"),
        "end the session and clear its cookie",
    ),
)

SESSIONS = web.AppKey("sessions", Sessions)
