"""The HTTP API against a real daemon over its Unix socket: each kind of
request, the problems (RFC 9457) and their statuses, the logs followed, the
Python clients' HTTP transport; every response seen is checked against
``GET /v1/openapi.json`` and decoded into the type the document was made from.
A TCP address that is not loopback, without TLS, keeps the daemon from
starting."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import stat
import subprocess
from contextlib import aclosing, closing
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from drivebay.client import AsyncClient, Client, DrivebayError, OperationError
from drivebay.kernel.httpapi.openapi import REF, result_type
from drivebay.kernel.httpapi.problems import Problem
from drivebay.kernel.httpapi.routes import EVENTS, ROUTES
from drivebay.kernel.httpapi.sessions import SESSION_ROUTES
from tests.e2e.harness import BIN, FAST_CONFIG, wait_for
from tests.e2e.test_resources import mis_daemon


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


class Api:
    """Requests to the daemon's http.sock; every answer is kept to be checked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[tuple[str, str, int, str, Any]] = []

    def __call__(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        with closing(UnixHttp(self.path)) as connection:
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, target, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            kind = response.getheader("Content-Type", "").split(";")[0]
            text = response.read()
        answer = json.loads(text) if kind.endswith("json") else text.decode()
        self.seen.append((method, target.split("?")[0], response.status, kind, answer))
        return response.status, answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def api(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    config = {
        "mailbox_size": 1,
        "max_frame_bytes": 1 << 20,
        "timeouts": {**FAST_CONFIG["timeouts"], "request_s": 0.5},
        "http": {"listen": f"127.0.0.1:{port}"},
    }
    daemon = mis_daemon(daemon_factory, tmp_path, config)
    daemon.port = port
    found = Api(str(daemon.state / "http.sock"))
    yield daemon, found
    check_against_openapi(found)


Seen = list[tuple[str, str, int, str, Any]]  # method, path, status, content type, answer


def check_against_openapi(api: Api) -> None:
    """Each answer is one the document declares for its route: a result decoded
    into the type its schema was generated from, or a Problem."""
    status, document = api("GET", "/v1/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    check_seen(document, api.seen)


def check_seen(document: dict[str, Any], seen: Seen) -> None:
    """``check_against_openapi`` for answers seen over any transport."""
    components = document["components"]["schemas"]
    for method, path, status, kind, answer in seen:
        if path == "/v1/openapi.json":
            continue
        session = next((r for r in SESSION_ROUTES if (r.method, r.path) == (method, path)), None)
        if session is not None:
            operation = document["paths"][path][method.lower()]
            if status >= 400:
                assert kind == "application/problem+json", (method, path, kind)
                assert msgspec.convert(answer, Problem).status == status
                continue
            content = operation["responses"]["200"]["content"]
            (expected,), _ = msgspec.json.schema_components([session.answer], ref_template=REF)
            assert content[kind]["schema"] == expected, (method, path)
            msgspec.convert(answer, session.answer)
            assert all(need in document["components"]["securitySchemes"] for need in session.needs)
            continue
        found = (r for r in (*ROUTES, EVENTS) if r.method == method and _matches(r.path, path))
        route = next(found, None)
        if route is None:
            assert status in (404, 405) and kind == "application/problem+json", path
            msgspec.convert(answer, Problem)
            continue
        operation = document["paths"][route.path][method.lower()]
        if status >= 400:
            assert kind == "application/problem+json"
            schema = operation["responses"]["default"]["content"][kind]["schema"]
            assert schema == {"$ref": REF.format(name="Problem")}
            assert msgspec.convert(answer, Problem).status == status
            continue
        content = operation["responses"]["200"]["content"]
        assert kind in content, (method, path, kind)
        if kind == "application/json":
            wanted = result_type(route)
            (expected,), _ = msgspec.json.schema_components([wanted], ref_template=REF)
            assert content[kind]["schema"] == expected
            msgspec.convert(answer, wanted)
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(expected)):
                assert ref in components


def _matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path) is not None


def test_http_api_end_to_end(api):  # type: ignore[no-untyped-def]
    daemon, http = api
    mode = stat.S_IMODE((daemon.state / "http.sock").stat().st_mode)
    assert mode == 0o600  # the control socket's rule

    status, version = http("GET", "/v1/version")
    assert status == 200 and version["version"]
    with closing(UnixHttp(http.path)) as connection:  # Prometheus' text, outside /v1
        connection.request("GET", "/metrics")
        scraped = connection.getresponse()
        exposition = scraped.read().decode()
    assert scraped.status == 200, exposition
    assert scraped.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert 'drivebay_driver_state{driver="mis",state="RUNNING",version="1.0.0"} 1.0' in exposition
    status, rows = http("GET", "/v1/drivers/mis")
    assert [(r["name"], r["version"], r["state"]) for r in rows] == [("mis", "1.0.0", "RUNNING")]
    status, described = http("GET", "/v1/drivers/mis/1.0.0")
    assert status == 200 and "echo" in described["operations"]
    assert http("GET", "/v1/drivers/nope/1.0.0")[0] == 404
    assert http("GET", "/v1/avail")[0] == 200

    # resources: add, read, change, pin, unpin, remove
    added = {"id": "v2", "driver": "mis", "properties": {"host": "alpha", "size_gb": 2.5}}
    status, body = http("POST", "/v1/resources", added)
    assert (status, body["properties"]) == (200, {"host": "alpha", "size_gb": 2.5})
    status, body = http("PATCH", "/v1/resources/v2", {"host": "beta", "size_gb": None})
    assert (status, body["properties"]) == (200, {"host": "beta"})
    status, body = http("PATCH", "/v1/resources/v2", {"host": "x" * 30})
    assert status == 400 and "longer than 20 characters" in body["detail"]
    assert http("PUT", "/v1/resources/v2/pin", {"version": "1.0.0"})[1]["pinned"] == "1.0.0"
    status, row = http("GET", "/v1/resources/v2")
    assert (status, row["pinned"], row["properties"]) == (200, "1.0.0", {"host": "beta"})
    assert http("DELETE", "/v1/resources/v2/pin")[1] == {"id": "v2", "pinned": None}
    assert http("DELETE", "/v1/resources/v2")[1] == {"id": "v2", "removed": True}
    status, body = http("GET", "/v1/resources/v2")
    assert (status, body["type"]) == (404, "NoSuchName")

    # calls: a result, an operation that raised, no such resource, a bad request
    status, result = http("POST", "/v1/resources/v1/calls/echo", {"value": [1, "two"]})
    assert (status, result) == (200, [1, "two"])
    status, problem = http("POST", "/v1/resources/v1/calls/fail?timeout=5", {"message": "on fire"})
    assert status == 422
    assert (problem["type"], problem["error_type"]) == ("OperationFailed", "ValueError")
    assert problem["detail"] == "ValueError: on fire" and "in fail" in problem["traceback"]
    status, problem = http("POST", "/v1/resources/nope/calls/echo", {})
    assert (status, problem["type"], problem["code"]) == (404, "NoSuchName", 4)
    status, problem = http("POST", "/v1/resources/v1/calls/echo?timeout=soon", {})
    assert (status, problem["type"]) == (400, "RequestError")
    assert http("GET", "/v1/nothing")[0] == 404
    assert http("DELETE", "/v1/version")[0] == 405
    status, problem = http("POST", "/v1/resources/v1/calls/echo", {"value": "x" * (1 << 20)})
    assert (status, problem["type"]) == (413, "TooLarge")
    assert b"408 Request Timeout" in half_sent(http.path)

    # logs: the tail, then followed while the driver writes
    assert http("POST", "/v1/resources/v1/calls/say", {"text": "first words"})[0] == 200
    status, tail = http("GET", "/v1/drivers/mis/1.0.0/logs?stream=stdout&lines=5")
    assert status == 200 and "first words" in tail
    followed = follow_logs(http, "/v1/drivers/mis/1.0.0/logs?follow=1&lines=0")
    assert "later words" in followed

    # over TCP (loopback, no TLS): no client certificate, no service
    tcp = HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    with closing(tcp):
        tcp.request("GET", "/v1/version")
        response = tcp.getresponse()
        problem = json.loads(response.read())
    assert (response.status, problem["type"]) == (401, "Unauthenticated")

    # events: a list, SSE (resumed by Last-Event-ID, a gap for another boot), NDJSON
    status, listed = http("GET", "/v1/events?since=0")
    assert status == 200 and any(e["type"] == "resource.added" for e in listed)
    audits = [e["data"] for e in listed if e["type"] == "audit"]
    assert any(a["what"].startswith("resource-add") and a["outcome"] == "ok" for a in audits)
    assert http("GET", "/v1/events?since=nonsense")[1]["type"] == "BadEventId"
    newest = listed[-1]["id"]
    sse = read_stream(http, "/v1/events?since=0", {"Accept": "text/event-stream"}, "\n\n")
    first = listed[0]
    assert sse.startswith(f"id: {first['id']}\nevent: {first['type']}\ndata: {{")
    resumed = read_stream(
        http,
        "/v1/events",
        {"Accept": "text/event-stream", "Last-Event-ID": listed[-2]["id"]},
        "\n\n",
    )
    assert resumed.startswith(f"id: {newest}\n")
    gap = read_stream(
        http, "/v1/events", {"Accept": "text/event-stream", "Last-Event-ID": "0123abcd-5"}, "\n\n"
    )
    assert gap.startswith("event: gap\n")
    line = read_stream(http, "/v1/events?since=0", {"Accept": "application/x-ndjson"}, "\n")
    assert json.loads(line)["id"] == listed[0]["id"]

    # start, stop, restart; the exit status in Drivebay-Code
    status, outcomes = http("POST", "/v1/drivers/mis/restart")
    assert status == 200 and [o["ok"] for o in outcomes] == [True, True]
    daemon.wait_state("mis", "RUNNING")


def half_sent(path: str) -> bytes:
    """What the daemon answers a body that stops half way (timeouts.request_s 0.5)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        return sock.recv(4096)


def read_stream(http: Api, target: str, headers: dict[str, str], end: str) -> str:
    """The first record of an open stream (up to ``end``)."""
    connection = UnixHttp(http.path)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        kind = response.getheader("Content-Type", "")
        http.seen.append(("GET", target.split("?")[0], 200, kind, ""))
        seen = ""
        while end not in seen:
            seen += response.read1(4096).decode()
        return seen.split(end)[0] + end
    finally:
        connection.close()


def follow_logs(http: Api, target: str) -> str:
    """Follow the stream until the driver's next words arrive in it."""
    connection = UnixHttp(http.path)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        http.seen.append(("GET", target.split("?")[0], 200, "text/plain", ""))
        http("POST", "/v1/resources/v1/calls/say", {"text": "later words"})
        seen = ""
        while "later words" not in seen:
            seen += response.read1(4096).decode()
        return seen
    finally:
        connection.close()


def test_busy_and_the_python_clients_over_http(api):  # type: ignore[no-untyped-def]
    daemon, http = api
    url = f"unix:{daemon.state / 'http.sock'}"
    with Client(http=url) as client:
        assert client.call("v1", "echo", {"value": "sync"}) == "sync"
        with pytest.raises(OperationError) as failed:
            client.call("v1", "fail", {"message": "no"})
        assert (failed.value.type, failed.value.code) == ("OperationFailed", 1)
        assert "in fail" in failed.value.traceback
        (row,) = client.request("status", names=["mis"])
        assert row["state"] == "RUNNING"
        for event in client.stream("events-follow", since="0"):
            assert event["id"] and event["type"]  # a record, as over the control socket
            break

    async def main() -> None:
        async with AsyncClient(http=url) as client:
            assert await client.call("v1", "echo", {"value": "async"}) == "async"
            # mailbox_size 1: one call in flight, one queued, the next refused
            held = [asyncio.ensure_future(client.call("v1", "hold", {"gate": "g"}))]
            await queued(client, 1)
            held.append(asyncio.ensure_future(client.call("v1", "hold", {"gate": "g"})))
            await queued(client, 2)
            status, problem = await asyncio.to_thread(
                http, "POST", "/v1/resources/v1/calls/echo", {}
            )
            assert (status, problem["type"]) == (429, "Busy")
            with pytest.raises(OperationError) as busy:
                await client.call("v1", "echo")
            assert busy.value.type == "Busy"
            await client.request("resource-add", id="v3", driver="mis", assignments=["host=c"])
            await client.call("v3", "release", {"gate": "g"})
            assert await asyncio.gather(*held) == ["g", "g"]
            async with aclosing(client.stream("tail-follow", name="mis", lines=0)) as chunks:
                async for chunk in chunks:
                    assert chunk == ""  # the tail of no lines: the stream is open
                    break

    uvloop.run(main())


def test_resources_by_page_over_http_drivebayctl_and_the_clients(api):  # type: ignore[no-untyped-def]
    daemon, http = api
    for number in range(2, 8):  # v1 .. v7
        body = {"id": f"v{number}", "driver": "mis", "properties": {"host": "a"}}
        assert http("POST", "/v1/resources", body)[0] == 200
    status, every = http("GET", "/v1/resources")  # no limit: every resource, as a list
    ids = [row["id"] for row in every]
    assert status == 200 and ids == [f"v{n}" for n in range(1, 8)]

    pages, after = [], None
    while True:
        target = "/v1/resources?limit=3" + (f"&after={after}" if after else "")
        status, page = http("GET", target)
        assert status == 200 and page["total"] == 7, page
        pages.append([row["id"] for row in page["resources"]])
        after = page["next"]
        if after is None:
            break
        assert after == pages[-1][-1]
    assert pages == [ids[0:3], ids[3:6], ids[6:]]
    status, page = http("GET", "/v1/resources?after=v5")  # after alone: the rest, as a page
    assert (status, [r["id"] for r in page["resources"]], page["next"]) == (200, ["v6", "v7"], None)
    assert http("GET", "/v1/resources?after=zzz")[1] == {"resources": [], "next": None, "total": 7}
    for wrong in ("limit=0", "limit=10001", "limit=many"):
        status, problem = http("GET", f"/v1/resources?{wrong}")
        assert (status, problem["type"]) == (400, "RequestError"), problem
    assert http("GET", "/v1/resources/v2?limit=1")[0] == 400  # one resource: no paging

    shown = daemon.ctl("resources", "--limit", "2", "--after", "v3", "--json")
    assert shown.returncode == 0, shown.stderr
    page = json.loads(shown.stdout)
    assert ([r["id"] for r in page["resources"]], page["next"], page["total"]) == (
        ["v4", "v5"],
        "v5",
        7,
    )
    text = daemon.ctl("resources", "--limit", "2", "--after", "v3").stdout.splitlines()
    assert text[-1] == "(2 of 7 resources; next page: --after v5)", text
    assert len(json.loads(daemon.ctl("resources", "--json").stdout)) == 7  # a list, as before
    refused = daemon.ctl("resources", "--limit", "0")
    assert refused.returncode == 2 and "1 to 10000" in refused.stderr

    with Client(http=f"unix:{daemon.state / 'http.sock'}") as client:
        page = client.request("resources", limit=4)
        assert ([r["id"] for r in page["resources"]], page["next"]) == (ids[:4], "v4")
    with Client(str(daemon.socket)) as client:
        page = client.request("resources", limit=4, after="v4")
        assert ([r["id"] for r in page["resources"]], page["next"]) == (ids[4:], None)
        assert [r["id"] for r in client.request("resources")] == ids


async def queued(client: AsyncClient, count: int) -> None:
    async with asyncio.timeout(30):
        while (await client.request("resources"))[0]["queued"] != count:
            await asyncio.sleep(0.01)


def test_tcp_beyond_loopback_needs_tls(tmp_path):
    config = tmp_path / "drivebay.yaml"
    config.write_text(
        json.dumps({"state_dir": str(tmp_path / "state"), "http": {"listen": "0.0.0.0:8080"}})
    )
    done = subprocess.run(
        [str(BIN / "drivebayd"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "http.listen: 0.0.0.0:8080 is not a loopback address and http.tls is not set" in (
        done.stderr
    )
    wait_for(lambda: not (tmp_path / "state" / "http.sock").exists(), 1, "no socket")


def test_https_a_client_certificate_needs_a_token_too(daemon_factory, tmp_path):
    """A real TLS listener on 127.0.0.1 with ``client_ca``: without a
    certificate the handshake fails; with one and no token the request is 401
    (the certificate authenticates the connection, not a role); with a token
    too it is served with the token's role."""
    files = make_certificates(tmp_path)
    port = free_port()
    tls = {"cert": files["server.pem"], "key": files["server.key"], "client_ca": files["ca.pem"]}
    token = "viewer-token-over-tls"
    tokens = [{"sha256": hashlib.sha256(token.encode()).hexdigest(), "role": "viewer"}]
    config = {
        "http": {"listen": f"127.0.0.1:{port}", "tls": tls},
        "authorization": {"tokens": tokens},
    }
    daemon = daemon_factory(config=config)
    daemon.start()
    trusted = ssl.create_default_context(cafile=files["ca.pem"])
    url = f"https://127.0.0.1:{port}"
    with pytest.raises(DrivebayError):  # no client certificate: the handshake fails
        Client(http=url, ssl=trusted).request("version")
    trusted.load_cert_chain(files["client.pem"], files["client.key"])
    with closing(http.client.HTTPSConnection("127.0.0.1", port, context=trusted)) as bare:
        bare.request("POST", "/v1/shutdown")  # a certificate and no token
        response = bare.getresponse()
        problem = json.loads(response.read())
    assert (response.status, problem["type"]) == (401, "Unauthenticated")
    assert problem["detail"].endswith("a client certificate alone grants no role")
    with closing(http.client.HTTPSConnection("127.0.0.1", port, context=trusted)) as bare:
        bare.request("POST", "/v1/login")  # nor does it open a session
        assert bare.getresponse().status == 401
    with Client(http=url, ssl=trusted) as client, pytest.raises(DrivebayError) as refused:
        client.request("status")
    assert "no credentials" in str(refused.value)
    with Client(http=url, ssl=trusted, token=token) as client:
        assert client.request("version")["protocol"]
        assert client.request("status") == []
        with pytest.raises(DrivebayError) as refused:
            client.request("shutdown")
        assert str(refused.value) == "permission denied: shutdown needs admin"
    assert daemon.ctl("version").returncode == 0  # still running


def make_certificates(root: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, str] = {}

    def issue(name: str, key: Any, issuer: Any = None, **extra: Any) -> Any:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_name, signer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if "ip" in extra:
            san = x509.SubjectAlternativeName([x509.IPAddress(extra["ip"])])
            builder = builder.add_extension(san, False)
        cert = builder.sign(signer_key, hashes.SHA256())
        (root / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (root / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files[f"{name}.pem"], files[f"{name}.key"] = (
            str(root / f"{name}.pem"),
            str(root / f"{name}.key"),
        )
        return cert

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("ca", ca_key)
    issue(
        "server",
        ec.generate_private_key(ec.SECP256R1()),
        (ca.subject, ca_key),
        ip=ipaddress.ip_address("127.0.0.1"),
    )
    issue("client", ec.generate_private_key(ec.SECP256R1()), (ca.subject, ca_key))
    return files
