"""Authorization against a real daemon: bearer tokens over loopback TCP (a
viewer reads and is refused a stop with 403, an operator stops, a driver
glob bounds a token, refusals are audited), ``token new`` printing a token
once and keeping its hash; as root, a second Unix user on the control
socket, judged by the same policy."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import tempfile
from contextlib import closing
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivebay.client import Client, DrivebayError
from drivebay.kernel.config import load_config
from drivebay.kernel.control import authz, schema
from tests.e2e.harness import wait_for
from tests.e2e.test_http_api import Api, free_port
from tests.e2e.test_resources import mis_daemon
from tests.sandbox.bundles import make_bundle

VIEWER = "viewer-token-for-the-test"
ELSEWHERE = "operator-token-for-other-drivers"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def over_tcp(
    port: int, method: str, target: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request(method, target, data, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())


def test_tokens_over_tcp(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    tokens = [
        {"sha256": sha(VIEWER), "role": "viewer"},
        {"sha256": sha(ELSEWHERE), "role": "operator", "drivers": ["other*"]},
    ]
    config = {"http": {"listen": f"127.0.0.1:{port}"}, "authorization": {"tokens": tokens}}
    daemon = mis_daemon(daemon_factory, tmp_path, config)

    made = daemon.ctl("token", "new", "--role", "operator")
    assert made.returncode == 0, made.stderr
    operator = made.stdout.strip()
    assert len(made.stdout.splitlines()) == 1 and "shown only now" in made.stderr
    kept = json.loads((daemon.state / "tokens.json").read_text())
    assert kept == [{"sha256": sha(operator), "role": "operator", "drivers": []}]
    assert operator not in (daemon.state / "tokens.json").read_text()

    assert over_tcp(port, "GET", "/v1/drivers", None)[0] == 401
    assert over_tcp(port, "POST", "/v1/drivers/mis/restart", None)[0] == 401
    assert over_tcp(port, "GET", "/v1/drivers", "a guess")[0] == 401
    status, rows = over_tcp(port, "GET", "/v1/drivers", VIEWER)
    assert status == 200 and [r["name"] for r in rows] == ["mis"]
    status, problem = over_tcp(port, "POST", "/v1/drivers/mis/stop", VIEWER)
    assert (status, problem["type"]) == (403, "PermissionDenied")
    assert problem["detail"] == "permission denied: stop needs operator"
    status, problem = over_tcp(port, "POST", "/v1/drivers/mis/stop", ELSEWHERE)
    assert status == 403 and "may not act on driver mis" in problem["detail"]
    status, problem = over_tcp(port, "POST", "/v1/resources/v1/calls/ping", ELSEWHERE)
    assert (
        status == 404
        and problem["detail"] == "no such resource: v1 (drivebayctl resources lists them)"
    )
    assert over_tcp(port, "GET", "/v1/drivers/mis", ELSEWHERE)[0] == 403  # nor read it by name
    assert over_tcp(port, "GET", "/v1/drivers", ELSEWHERE) == (200, [])  # nor in the list
    status, outcome = over_tcp(port, "POST", "/v1/drivers/mis/stop", operator)
    assert status == 200 and outcome[0]["ok"], outcome
    daemon.wait_state("mis", "STOPPED")

    status, listed = Api(str(daemon.state / "http.sock"))("GET", "/v1/events?since=0")
    audits = [e["data"] for e in listed if e["type"] == "audit"]
    refusals = [a for a in audits if a["outcome"].startswith("refused: permission denied")]
    assert [a["what"] for a in refusals[:1]] == ["stop names=['mis']"]
    assert all("token " in a["who"] for a in refusals)
    unknown = [a for a in audits if a["outcome"].startswith("refused: no credentials")]
    assert [a["what"] for a in unknown] == ["restart names=['mis']"]
    assert {a["outcome"] for a in audits if a["what"] == "stop names=['mis']"} >= {"ok"}

    daemon.stop()  # the stored token counts after a restart
    daemon.start()
    wait_for(lambda: "mis" in daemon.status(), what="mis known again after the restart")
    url = f"http://127.0.0.1:{port}"
    with Client(http=url, token=operator) as client:  # the Python client sends it too
        assert [row["name"] for row in client.request("status")] == ["mis"]
    with Client(http=url, token=VIEWER) as client, pytest.raises(DrivebayError) as refused:
        client.request("start", {"names": ["mis"]})
    assert str(refused.value) == "permission denied: start needs operator"


def as_user(uid: int, gid: int, socket_path: str, *commands: str, http: bool = False) -> list[str]:
    """In a forked child that becomes ``uid``: each command's answer or error
    (over the control socket, or the HTTP API's Unix socket)."""
    import drivebay.client._http  # noqa: F401 -- the child may not read the modules it needs

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the socket and one pipe
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            answers = []
            for command in commands:
                try:
                    where = {"http": f"unix:{socket_path}"} if http else {"path": socket_path}
                    with Client(**where) as client:
                        answers.append(f"ok {client.request(command)!r:.40}")
                except DrivebayError as exc:
                    answers.append(f"error {exc}")
            os.write(write, json.dumps(answers).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data
    return list(json.loads(data))


def test_a_second_unix_user_on_the_control_socket(daemon_factory):  # type: ignore[no-untyped-def]
    """As root, a child that becomes uid nobody (a viewer by name) and one of
    an unnamed uid talk to both sockets. Without root no second uid can be
    had (no uidmap here): the same config is judged by the daemon's own
    policy code for those uids, the sockets' mode and the owner's admin role
    are checked on the real daemon, and only the SO_PEERCRED of a foreign
    process is left to the run as root (``scripts/test`` as root has it)."""
    nobody = pwd.getpwnam("nobody")
    reachable = Path(tempfile.mkdtemp(prefix="drivebay-authz-"))  # tmp_path is 0700
    try:
        reachable.chmod(0o711)
        socket_path = str(reachable / "ctl.sock")
        config = {
            "socket": socket_path,
            "http": {"socket": str(reachable / "http.sock")},
            "authorization": {"users": {"nobody": "viewer"}},
        }
        daemon = daemon_factory(config=config)
        daemon.socket = Path(socket_path)
        daemon.start()
        assert (os.stat(socket_path).st_mode & 0o777) == 0o666  # others are named
        assert daemon.ctl("version").returncode == 0  # the owner still is admin
        if os.geteuid() != 0:
            judged_as_the_daemon_would(daemon.config_path, nobody)
            return
        answers = as_user(nobody.pw_uid, nobody.pw_gid, socket_path, "version", "shutdown")
        assert answers[0].startswith("ok ")
        assert answers[1] == "error permission denied: shutdown needs admin"
        http_sock = str(reachable / "http.sock")
        answers = as_user(nobody.pw_uid, nobody.pw_gid, http_sock, "status", "stop", http=True)
        assert answers == ["ok []", "error permission denied: stop needs operator"]
        stranger = as_user(54321, 54321, socket_path, "version")  # no rule names it
        refused = "error permission denied: no rule of this daemon names uid 54321;"
        assert stranger[0].startswith(refused)
    finally:
        shutil.rmtree(reachable, ignore_errors=True)


def judged_as_the_daemon_would(config_path: Path, nobody: pwd.struct_passwd) -> None:
    """The daemon's config, loaded as it loads it, judged by its policy for
    uid nobody (named: viewer) and an unnamed uid, with the real user database."""
    config = load_config(config_path)
    assert authz.peer_role(nobody.pw_uid, nobody.pw_gid, config) is authz.Role.viewer
    assert authz.peer_role(54321, 54321, config) is None
    stranger = authz.Principal("pid 1 uid 54321", None)
    refused = "permission denied: no rule of this daemon names uid 54321;"
    assert authz.refusal(stranger).startswith(refused)
    viewer = authz.Principal("pid 1 uid nobody", authz.Role.viewer)
    authz.check(viewer, schema.VersionRequest(), lambda _: None)
    with pytest.raises(authz.PermissionDenied, match=r"^permission denied: shutdown needs admin$"):
        authz.check(viewer, schema.ShutdownRequest(), lambda _: None)


def test_naming_others_opens_the_sockets_at_a_reload(daemon):  # type: ignore[no-untyped-def]
    sockets = (daemon.socket, daemon.state / "http.sock")
    assert [os.stat(path).st_mode & 0o777 for path in sockets] == [0o600, 0o600]
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["authorization"] = {"users": {"nobody": "viewer"}}
    daemon.config_path.write_text(yaml.safe_dump(settings))
    reloaded = daemon.ctl("reload", "--json")
    assert reloaded.returncode == 0 and json.loads(reloaded.stdout)["restart_needed"] == []
    assert [os.stat(path).st_mode & 0o777 for path in sockets] == [0o666, 0o666]


def ndjson_until(port: int, token: str, target: str, last: Any) -> list[dict[str, Any]]:
    """The records of an NDJSON event stream, up to the first ``last`` accepts."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"}
    records: list[dict[str, Any]] = []
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        while not records or not last(records[-1]):
            line = response.fp.readline()
            assert line, f"the stream ended after {records}"
            if line.strip().startswith(b"{"):
                records.append(json.loads(line))
    return records


def test_a_token_limited_to_drivers_sees_only_them(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    """Reads that name no driver (status, resources, avail, events listed and
    streamed, metrics) show a token limited to ``other*`` only other-a; a
    request naming mis is 403, one naming mis's resource is 404 as for a
    resource that does not exist; changing requests stay bounded alike."""
    port = free_port()
    config = {"http": {"listen": f"127.0.0.1:{port}"}}
    daemon = mis_daemon(daemon_factory, tmp_path, config)
    daemon.drop(make_bundle(daemon.staging, name="other-a"))
    daemon.wait_state("other-a", "RUNNING")
    made = daemon.ctl("resource", "add", "o1", "--driver", "other-a")
    assert made.returncode == 0, made.stderr
    viewer = daemon.ctl("token", "new", "--role", "viewer", "--drivers", "other*").stdout.strip()
    admin = daemon.ctl("token", "new", "--role", "admin", "--drivers", "other*").stdout.strip()

    def get(target: str, token: str = viewer) -> tuple[int, Any]:
        return over_tcp(port, "GET", target, token)

    status, rows = get("/v1/drivers")
    assert status == 200 and [r["name"] for r in rows] == ["other-a"]
    assert get("/v1/drivers/other-a")[0] == 200
    status, problem = get("/v1/drivers/mis")
    assert (status, problem["detail"]) == (
        403,
        "permission denied: this token may not act on driver mis (it may on other*)",
    )
    assert get("/v1/drivers/mis/1.0.0")[0] == 403
    status, problem = get("/v1/drivers/other-z/1.0")  # unknown: the known names it may see
    assert (status, problem["type"]) == (404, "NoSuchName")
    assert problem["detail"] == "no such driver: other-z@1.0 (known: other-a@1.0.0)"
    assert get("/v1/drivers/mis/1.0.0/logs")[0] == 403
    status, rows = get("/v1/resources")
    assert status == 200 and [r["id"] for r in rows] == ["o1"]
    assert get("/v1/resources/o1")[0] == 200
    hidden, unknown = get("/v1/resources/v1"), get("/v1/resources/nope")
    assert hidden[0] == unknown[0] == 404
    assert hidden[1]["detail"] == unknown[1]["detail"].replace("nope", "v1")  # told alike
    status, rows = get("/v1/avail")
    assert status == 200 and {r["name"] for r in rows} == {"other-a"}
    status, listed = get("/v1/events?since=0")
    assert status == 200 and listed and {e["driver"] for e in listed} == {"other-a"}
    assert any(e["type"] == "resource.added" and e["resource"] == "o1" for e in listed)
    everything = Api(str(daemon.state / "http.sock"))("GET", "/v1/events?since=0")[1]
    assert {e["driver"] for e in everything} >= {"mis", "other-a", None}  # what it is spared
    streamed = ndjson_until(port, viewer, "/v1/events?since=0", lambda e: e.get("resource") == "o1")
    assert {e["driver"] for e in streamed} == {"other-a"}
    status, text = over_tcp_text(port, "/metrics", viewer)
    assert status == 200 and 'driver="other-a"' in text and 'driver="mis"' not in text
    assert "drivebay_bundles" in text  # the daemon-wide series stay
    with Client(http=f"http://127.0.0.1:{port}", token=admin) as client:  # the commands route
        assert [r["name"] for r in client.request("status")] == ["other-a"]
        with pytest.raises(DrivebayError, match="no such resource: v1"):
            client.request("call", {"resource": "v1", "op": "ping"})

    # changing requests: by name, by resource, and of every driver
    status, problem = over_tcp(port, "POST", "/v1/drivers/mis/stop", admin)
    assert status == 403 and "may not act on driver mis" in problem["detail"]
    for target in ("/v1/resources/v1", "/v1/resources/v1/pin"):
        assert over_tcp(port, "DELETE", target, admin)[0] == 404
    status, problem = over_tcp(port, "POST", "/v1/commands/stop", admin, {"names": ["all"]})
    assert status == 403 and "of every driver (no name, or all)" in problem["detail"]
    status, problem = over_tcp(port, "POST", "/v1/reload", admin)
    assert status == 403 and "acts on the whole daemon" in problem["detail"]
    status, problem = over_tcp(port, "POST", "/v1/resources", admin, {"id": "m2", "driver": "mis"})
    assert status == 403 and "may not act on driver mis" in problem["detail"]
    assert daemon.status()["mis"]["state"] == "RUNNING"
    assert [r["id"] for r in json.loads(daemon.ctl("resources", "--json").stdout)] == ["o1", "v1"]
    status, outcome = over_tcp(port, "POST", "/v1/drivers/other-a/restart", admin)
    assert status == 200 and all(o["ok"] for o in outcome), outcome


def over_tcp_text(port: int, target: str, token: str) -> tuple[int, str]:
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request("GET", target, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, response.read().decode()


def test_token_ls_and_rm_apply_at_once(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    """``token ls`` shows hashes, roles and globs (never a token); ``token rm``
    rewrites tokens.json whole and the running daemon refuses the token on its
    next request, also through an admin page session opened with it."""
    port = free_port()
    config = {
        "http": {"listen": f"127.0.0.1:{port}"},
        "authorization": {"tokens": [{"sha256": sha(VIEWER), "role": "viewer"}]},
    }
    daemon = mis_daemon(daemon_factory, tmp_path, config)
    made = [
        daemon.ctl("token", "new", "--role", "operator").stdout.strip(),
        daemon.ctl("token", "new", "--role", "viewer", "--drivers", "other*", "n*").stdout.strip(),
    ]
    operator, limited = made
    listed = daemon.ctl("token", "ls")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{sha(VIEWER)[:12]}  viewer   config  every driver",
        f"{sha(operator)[:12]}  operator kept    every driver",
        f"{sha(limited)[:12]}  viewer   kept    other*, n*",
    ]
    rows = json.loads(daemon.ctl("token", "ls", "--json").stdout)
    assert [(r["sha256"], r["source"], r["drivers"]) for r in rows] == [
        (sha(VIEWER), "config", []),
        (sha(operator), "kept", []),
        (sha(limited), "kept", ["other*", "n*"]),
    ]
    assert not any(token in listed.stdout + json.dumps(rows) for token in made)
    status, problem = over_tcp(port, "GET", "/v1/tokens", VIEWER)  # admin only
    assert (status, problem["detail"]) == (403, "permission denied: token-ls needs admin")

    # a session of the page, opened with the operator token
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request("POST", "/v1/login", headers={"Authorization": f"Bearer {operator}"})
        response = connection.getresponse()
        assert response.status == 200
        cookie = response.getheader("Set-Cookie", "").split(";")[0]
        response.read()

    def with_session(method: str, target: str) -> tuple[int, Any]:
        with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
            connection.request(method, target, headers={"Cookie": cookie})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

    assert with_session("GET", "/v1/drivers")[0] == 200
    assert over_tcp(port, "GET", "/v1/drivers", operator)[0] == 200
    stream = HTTPConnection("127.0.0.1", port, timeout=30)  # an event stream open with it
    headers = {"Authorization": f"Bearer {operator}", "Accept": "application/x-ndjson"}
    stream.request("GET", "/v1/events?since=0", headers=headers)
    streamed = stream.getresponse()
    assert streamed.status == 200 and json.loads(streamed.readline())["id"]

    removed = daemon.ctl("token", "rm", sha(operator)[:8])
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"{sha(operator)[:12]}  operator kept    every driver: removed"
    status, problem = over_tcp(port, "GET", "/v1/drivers", operator)  # the very next request
    assert status == 401 and problem["detail"].startswith("unknown token")
    status, problem = with_session("GET", "/v1/drivers")
    assert (
        status == 401
        and "the token this session was opened with was removed" in (problem["detail"])
    )
    assert with_session("GET", "/v1/session")[0] == 401  # the session is gone
    with closing(stream):  # it ends at its next event (token rm's audit line), unsent
        rest = [json.loads(line) for line in streamed.read().splitlines() if line]
    assert not any(e["type"] == "audit" and "token-rm" in e["data"]["what"] for e in rest)
    kept = daemon.state / "tokens.json"
    assert json.loads(kept.read_text()) == [
        {"sha256": sha(limited), "role": "viewer", "drivers": ["other*", "n*"]}
    ]
    assert (kept.stat().st_mode & 0o777) == 0o600
    assert over_tcp(port, "GET", "/v1/drivers", limited)[0] == 200  # the others hold

    config_token = daemon.ctl("token", "rm", sha(VIEWER)[:10])
    assert config_token.returncode == 1 and config_token.stderr.count("\n") == 1
    assert "is in the config file (authorization.tokens): remove it there" in config_token.stderr
    unknown = daemon.ctl("token", "rm", "0123456789")
    assert unknown.returncode == 4 and "no token 0123456789" in unknown.stderr
    short = daemon.ctl("token", "rm", "ab")
    assert short.returncode == 1 and "first 8 or more hex digits" in short.stderr
    assert over_tcp(port, "GET", "/v1/drivers", VIEWER)[0] == 200

    assert over_tcp(port, "DELETE", f"/v1/tokens/{sha(limited)}", VIEWER)[0] == 403

    # a token of the config file: removed there, applied by a reload, sessions too
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request("POST", "/v1/login", headers={"Authorization": f"Bearer {VIEWER}"})
        response = connection.getresponse()
        assert response.status == 200
        cookie = response.getheader("Set-Cookie", "").split(";")[0]
        response.read()
    assert with_session("GET", "/v1/drivers")[0] == 200
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["authorization"] = {}
    daemon.config_path.write_text(yaml.safe_dump(settings))
    assert daemon.ctl("reload").returncode == 0
    assert over_tcp(port, "GET", "/v1/drivers", VIEWER)[0] == 401
    assert with_session("GET", "/v1/drivers")[0] == 401
    daemon.stop()  # removed for good
    daemon.start()
    wait_for(lambda: "mis" in daemon.status(), what="mis known again after the restart")
    assert over_tcp(port, "GET", "/v1/drivers", operator)[0] == 401
    assert over_tcp(port, "GET", "/v1/drivers", limited)[0] == 200
