"""The authorization policy without processes: the role table is complete,
roles nest, Unix peers get their role from the config, tokens are compared
by hash in constant time and their driver globs bound what they act on."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import hmac
import os
import pwd
import stat
from pathlib import Path

import msgspec
import pytest

from drivebay.kernel.config import Config
from drivebay.kernel.control import schema as S
from drivebay.kernel.control.authz import (
    NEEDS,
    PermissionDenied,
    Principal,
    Role,
    TokenStore,
    Unauthenticated,
    check,
    peer_role,
    socket_mode,
    token_principal,
)
from drivebay.kernel.control.scope import chunk_shown, no_such_driver, screened, shown
from drivebay.kernel.resources.book import no_such_resource
from drivebay.protocol.errors import NoSuchName

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


def config(**authorization: object) -> Config:
    return msgspec.convert({"authorization": authorization}, Config)


def no_resources(resource_id: str) -> str | None:
    return None


def refused(principal: Principal, request: S.ControlRequest) -> str:
    with pytest.raises(PermissionDenied) as caught:
        check(principal, request, {"r1": "alpha", "r2": "beta"}.get)
    return str(caught.value)


def test_every_request_type_needs_a_role():
    assert set(NEEDS) == set(S.REQUESTS.values())


def test_roles_nest():
    viewer, operator, admin = (Principal("p", role) for role in Role)
    status, stop, reload = S.StatusRequest(), S.StopRequest(["alpha"]), S.ReloadRequest()
    check(viewer, status, no_resources)
    assert refused(viewer, stop) == "permission denied: stop needs operator"
    check(operator, stop, no_resources)
    check(operator, S.CallRequest("r1", "ping"), no_resources)
    assert refused(operator, reload) == "permission denied: reload needs admin"
    assert refused(operator, S.TokenNewRequest("viewer")).endswith("token-new needs admin")
    check(admin, reload, no_resources)
    assert refused(Principal("p", None), status) == "permission denied: status needs viewer"


def test_unix_peers_by_the_config():
    assert peer_role(0, 0, Config()) is Role.admin
    assert peer_role(os.geteuid(), os.getegid(), Config()) is Role.admin
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert peer_role(uid, gid, Config()) is None  # no rule names it
    assert peer_role(uid, gid, config(users={"nobody": "viewer"})) is Role.viewer
    assert peer_role(uid, gid, config(groups={NOGROUP: "operator"})) is Role.operator
    grouped = msgspec.convert({"socket_group": NOGROUP}, Config)
    assert peer_role(uid, gid, grouped) is Role.operator  # socket_group: operator
    lowered = msgspec.convert(
        {"socket_group": NOGROUP, "authorization": {"groups": {NOGROUP: "viewer"}}}, Config
    )
    assert peer_role(uid, gid, lowered) is Role.viewer  # unless the config says otherwise


def test_the_sockets_open_up_only_when_others_are_named():
    assert socket_mode(Config()) == 0o600
    assert socket_mode(msgspec.convert({"socket_group": NOGROUP}, Config)) == 0o660
    owner = pwd.getpwuid(os.geteuid()).pw_name
    assert socket_mode(config(users={owner: "admin"})) == 0o600
    assert socket_mode(config(users={"nobody": "viewer"})) == 0o666
    assert socket_mode(config(groups={NOGROUP: "viewer"})) == 0o666


def tokens(*rules: dict[str, object]) -> tuple[str, ...]:
    return config(tokens=list(rules)).authorization.tokens  # type: ignore[return-value]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_token_by_its_hash_compared_in_constant_time(monkeypatch):
    known = tokens(
        {"sha256": sha("secret-a"), "role": "viewer"},
        {"sha256": sha("secret-b").upper(), "role": "operator", "drivers": ["al*"]},
    )
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    viewer = token_principal("tcp 127.0.0.1:1", "secret-a", known)  # type: ignore[arg-type]
    assert (viewer.role, viewer.drivers) == (Role.viewer, None)
    assert len(compared) == 2  # every known hash, also after a match
    operator = token_principal("tcp", "secret-b", known)  # type: ignore[arg-type]
    assert (operator.role, operator.drivers) == (Role.operator, ("al*",))
    assert "secret" not in operator.who
    with pytest.raises(Unauthenticated):
        token_principal("tcp", "guess", known)  # type: ignore[arg-type]


def test_a_tokens_driver_globs_bound_what_it_acts_on():
    limited = Principal("t", Role.operator, ("al*",))
    check(limited, S.StopRequest(["alpha", "alpaca@1.0"]), no_resources)
    assert "may not act on driver beta" in refused(limited, S.StopRequest(["alpha", "beta"]))
    check(limited, S.CallRequest("r1", "ping"), {"r1": "alpha"}.get)
    with pytest.raises(NoSuchName) as hidden:  # another driver's resource: as if unknown
        check(limited, S.CallRequest("r2", "ping"), {"r2": "beta"}.get)
    assert str(hidden.value) == str(no_such_resource("r2"))
    with pytest.raises(NoSuchName):
        check(limited, S.ResourceSetRequest("r2", ["a=1"]), {"r2": "beta"}.get)
    check(limited, S.CallRequest("r9", "ping"), no_resources)  # unknown: its handler says so
    assert "of every driver (no name, or all)" in refused(limited, S.StopRequest([]))  # all of them
    for every in (S.StopRequest(["all"]), S.RestartRequest(["alpha", "all"])):
        assert "of every driver (no name, or all)" in refused(
            limited, every
        )  # "all" matches "al*" too
    check(limited, S.StatusRequest(), no_resources)  # reading all: scope.shown bounds it
    check(limited, S.DescribeRequest("alpha@1.0"), no_resources)
    assert "driver beta" in refused(limited, S.TailRequest("beta"))
    assert "driver beta" in refused(limited, S.StatusRequest(["beta"]))


def test_a_limited_token_sees_only_its_drivers():
    limited = Principal("t", Role.viewer, ("al*",))
    everyone = Principal("t", Role.viewer)
    rows = [
        S.StatusRow("alpha", "1.0", "RUNNING"),
        S.StatusRow("beta", "1.0", "STOPPED"),
        S.StatusRow("alpha-broken.zip", None, "INVALID"),
    ]
    assert shown(everyone, S.StatusRequest(), rows, 3) == (rows, 3)
    assert shown(limited, S.StatusRequest(), rows, 3) == (rows[:1], 0)  # beta's stop is not its
    resources = [
        S.ResourceRow("r1", "alpha", "1.0", None, {}, "bound", 0, None),
        S.ResourceRow("r2", "beta", "1.0", None, {}, "bound", 0, None),
    ]
    assert shown(limited, S.ResourcesRequest(), resources, 0) == (resources[:1], 0)
    avail = [
        S.AvailRow("a.zip", "alpha", "1.0", "active", None),
        S.AvailRow("b.zip", "beta", "1.0", "active", None),
        S.AvailRow("x.zip", None, None, "INVALID", "bad"),
    ]
    assert shown(limited, S.AvailRequest(), avail, 0) == (avail[:1], 0)
    events = [
        S.Event("b-1", 0.0, "driver.state", driver="alpha"),
        S.Event("b-2", 0.0, "resource.added", driver="beta", resource="r2"),
        S.Event("b-3", 0.0, "audit", data={"who": "x", "what": "reload", "outcome": "ok"}),
        S.Event(None, 0.0, "gap"),
    ]
    assert shown(limited, S.EventsRequest(), events, 0) == ([events[0], events[3]], 0)
    follow = S.EventsFollowRequest()
    assert [chunk_shown(limited, follow, e) for e in events] == [True, False, False, True]
    assert all(chunk_shown(limited, S.TailFollowRequest("alpha"), "text") for _ in events)
    unknown = no_such_driver("alpine", ["alpha@1.0", "beta@1.0"])
    assert str(screened(everyone, unknown)) == "no such driver: alpine (known: alpha@1.0, beta@1.0)"
    assert str(screened(limited, unknown)) == "no such driver: alpine (known: alpha@1.0)"
    assert isinstance(screened(limited, unknown), NoSuchName)


def test_token_new_keeps_only_the_hash(tmp_path: Path):
    async def make() -> tuple[str, str]:
        return await TokenStore(tmp_path).add(Role.operator, ["al*"])

    token, digest = asyncio.run(make())
    assert digest == sha(token)
    kept = tmp_path / "tokens.json"
    assert token not in kept.read_text() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    again = TokenStore(tmp_path).rules  # after a restart
    principal = token_principal("tcp", token, again)
    assert (principal.role, principal.drivers) == (Role.operator, ("al*",))
