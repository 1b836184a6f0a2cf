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
from tests.e2e.harness import wait_for
from tests.e2e.test_http_api import Api, free_port
from tests.e2e.test_resources import mis_daemon

VIEWER = "viewer-token-for-the-test"
ELSEWHERE = "operator-token-for-other-drivers"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def over_tcp(port: int, method: str, target: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request(method, target, headers=headers)
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
    assert status == 403 and "may not act on driver mis" in problem["detail"]
    assert over_tcp(port, "GET", "/v1/drivers/mis", ELSEWHERE)[0] == 403  # nor read it by name
    assert over_tcp(port, "GET", "/v1/drivers", ELSEWHERE)[0] == 200  # reading all is reading
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
    if os.geteuid() != 0:  # a peer of another uid needs one: never skipped, said in one line
        pytest.fail(
            "this test needs a second Unix user: run scripts/test as root "
            "(it forks a child that becomes uid nobody)",
            pytrace=False,
        )
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
        answers = as_user(nobody.pw_uid, nobody.pw_gid, socket_path, "version", "shutdown")
        assert answers[0].startswith("ok ")
        assert answers[1] == "error permission denied: shutdown needs admin"
        http_sock = str(reachable / "http.sock")
        answers = as_user(nobody.pw_uid, nobody.pw_gid, http_sock, "status", "stop", http=True)
        assert answers == ["ok []", "error permission denied: stop needs operator"]
        stranger = as_user(54321, 54321, socket_path, "version")  # no rule names it
        refused = "error permission denied: no rule of this daemon names uid 54321;"
        assert stranger[0].startswith(refused)
        assert daemon.ctl("version").returncode == 0  # root still is admin
    finally:
        shutil.rmtree(reachable, ignore_errors=True)


def test_naming_others_opens_the_sockets_at_a_reload(daemon):  # type: ignore[no-untyped-def]
    sockets = (daemon.socket, daemon.state / "http.sock")
    assert [os.stat(path).st_mode & 0o777 for path in sockets] == [0o600, 0o600]
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["authorization"] = {"users": {"nobody": "viewer"}}
    daemon.config_path.write_text(yaml.safe_dump(settings))
    reloaded = daemon.ctl("reload", "--json")
    assert reloaded.returncode == 0 and json.loads(reloaded.stdout)["restart_needed"] == []
    assert [os.stat(path).st_mode & 0o777 for path in sockets] == [0o666, 0o666]
