"""The admin page's session store: a session found by its cookie, its CSRF
token needed for a changing request, its end at expiry or logout, and the
oldest dropped beyond the most kept."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from drivebay.kernel.control.authz import PermissionDenied, Principal, Role
from drivebay.kernel.httpapi import sessions
from drivebay.kernel.httpapi.sessions import COOKIE, CSRF_HEADER, Sessions, principal_of

OPERATOR = Principal("tcp 127.0.0.1:5 token 0123456789ab", Role.operator, ("net-*",))


def request(method: str, sid: str | None, csrf: str | None = None):  # type: ignore[no-untyped-def]
    headers = {} if sid is None else {"Cookie": f"{COOKIE}={sid}"}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    return make_mocked_request(method, "/v1/drivers", headers=headers)


def test_a_session_by_its_cookie_and_csrf_token() -> None:
    store = Sessions()
    sid, session = store.open(OPERATOR)
    assert session.principal == Principal(f"{OPERATOR.who} session", Role.operator, ("net-*",))
    assert store.find(request("GET", None)) is None
    assert store.find(request("GET", "forged")) is None
    assert principal_of(store.find(request("GET", sid)), request("GET", sid)) == session.principal  # type: ignore[arg-type]
    for csrf in (None, "wrong", ""):
        with pytest.raises(PermissionDenied, match="X-CSRF-Token"):
            principal_of(session, request("POST", sid, csrf))
    assert principal_of(session, request("POST", sid, session.csrf)) == session.principal
    store.close(request("POST", sid))
    assert store.find(request("GET", sid)) is None


def test_a_session_expires_and_the_oldest_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Sessions(ttl_s=0.0)
    sid, _ = store.open(OPERATOR)
    assert store.find(request("GET", sid)) is None  # expired at once
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    store = Sessions()
    ids = [store.open(OPERATOR)[0] for _ in range(4)]
    assert store.find(request("GET", ids[0])) is None
    assert all(store.find(request("GET", sid)) for sid in ids[1:])
