"""The HTTP API's route table, problems and OpenAPI document, without a daemon:
every command is reachable, a request's fields come from path, query and body
as the table says, each error has its status, and ``http.listen`` beyond
loopback needs TLS."""

from __future__ import annotations

import pytest

from drivebay.kernel.config import HttpSettings, TlsSettings
from drivebay.kernel.control import schema
from drivebay.kernel.control.handlers import CallFailed
from drivebay.kernel.httpapi.openapi import document
from drivebay.kernel.httpapi.problems import problem
from drivebay.kernel.httpapi.routes import ROUTES, Route
from drivebay.kernel.httpapi.sessions import SESSION_ROUTES
from drivebay.kernel.resources.actor import DriverFatal
from drivebay.protocol.errors import (
    Busy,
    CallTimeout,
    ConfigError,
    DriverCrashed,
    KernelError,
    NoSuchName,
    NotRunning,
    OperationFailed,
)


def route(method: str, path: str) -> Route:
    return next(r for r in ROUTES if (r.method, r.path) == (method, path))


def test_every_command_is_reachable_and_the_issue_s_routes_exist():
    assert {r.command for r in ROUTES} == set(schema.REQUESTS)
    for method, path in [
        ("GET", "/v1/drivers"),
        ("GET", "/v1/drivers/{name}"),
        ("GET", "/v1/drivers/{name}/{version}"),
        ("POST", "/v1/drivers/{name}/start"),
        ("POST", "/v1/drivers/{name}/stop"),
        ("POST", "/v1/drivers/{name}/restart"),
        ("GET", "/v1/drivers/{name}/{version}/logs"),
        ("GET", "/v1/avail"),
        ("GET", "/v1/resources"),
        ("POST", "/v1/resources"),
        ("GET", "/v1/resources/{id}"),
        ("PATCH", "/v1/resources/{id}"),
        ("DELETE", "/v1/resources/{id}"),
        ("PUT", "/v1/resources/{id}/pin"),
        ("DELETE", "/v1/resources/{id}/pin"),
        ("POST", "/v1/resources/{id}/calls/{operation}"),
        ("POST", "/v1/reload"),
        ("POST", "/v1/shutdown"),
        ("GET", "/v1/version"),
    ]:
        route(method, path)
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)


def test_fields_come_from_path_query_and_body():
    logs = route("GET", "/v1/drivers/{name}/{version}/logs")
    params = {"name": "mis", "version": "1.0.0"}
    assert logs.request(params, {"lines": ["5"]}, None) == schema.TailRequest("mis@1.0.0", lines=5)
    followed = logs.request(params, {"follow": ["1"], "stream": ["stderr"]}, None)
    assert followed == schema.TailFollowRequest("mis@1.0.0", "stderr")
    call = route("POST", "/v1/resources/{id}/calls/{operation}")
    made = call.request({"id": "v1", "operation": "echo"}, {"timeout": ["2.5"]}, {"value": 1})
    assert made == schema.CallRequest("v1", "echo", {"value": 1}, 2.5)
    patch = route("PATCH", "/v1/resources/{id}")
    changed = patch.request({"id": "v1"}, {}, {"host": "a", "size": None})
    assert changed == schema.ResourceSetRequest("v1", ['host:="a"', "size:=null"])
    add = route("POST", "/v1/resources")
    body = {"id": "v2", "driver": "mis", "properties": {"n": 2}}
    assert add.request({}, {}, body) == schema.ResourceAddRequest("v2", "mis", None, ["n:=2"])
    unpin = route("DELETE", "/v1/resources/{id}/pin")
    assert unpin.request({"id": "v1"}, {}, None) == schema.ResourcePinRequest("v1", None)
    start = route("POST", "/v1/drivers/{name}/start")
    assert start.request({"name": "mis"}, {}, None) == schema.StartRequest(["mis"])
    status = route("GET", "/v1/drivers")
    assert status.request({}, {"names": ["a", "b"]}, None) == schema.StatusRequest(["a", "b"])


@pytest.mark.parametrize(
    ("method", "path", "params", "query", "body", "said"),
    [
        ("GET", "/v1/drivers", {}, {"nmes": ["a"]}, None, "unknown query parameter 'nmes'"),
        ("GET", "/v1/version", {}, {}, {"x": 1}, "takes no body"),
        ("POST", "/v1/resources", {}, {}, [1], "must be a JSON object"),
        ("POST", "/v1/resources", {}, {}, {"id": "v"}, "missing required field `driver`"),
        ("PATCH", "/v1/resources/{id}", {"id": "v"}, {}, {"a=b": 1}, "without '='"),
        (
            "POST",
            "/v1/resources/{id}/calls/{operation}",
            {"id": "v", "operation": "op"},
            {"resource": ["w"]},
            {},
            "unknown query parameter 'resource'",
        ),
    ],
)
def test_a_malformed_request_is_a_bad_request(method, path, params, query, body, said):
    with pytest.raises(schema.BadRequest, match=said):
        route(method, path).request(params, query, body)


@pytest.mark.parametrize(
    ("error", "status", "name"),
    [
        (schema.BadRequest("bad"), 400, "RequestError"),
        (NoSuchName("no such"), 404, "NoSuchName"),
        (NotRunning("stopped"), 409, "NotRunning"),
        (CallFailed(Busy("full")), 429, "Busy"),
        (CallFailed(DriverCrashed("died")), 502, "DriverCrashed"),
        (CallFailed(DriverFatal("fatal")), 503, "DriverFatal"),
        (CallFailed(CallTimeout("late")), 504, "CallTimeout"),
        (KernelError("lost"), 500, "KernelError"),
    ],
)
def test_each_error_has_its_status(error, status, name):
    found = problem("call", error)
    assert (found.status, found.type) == (status, name)
    assert found.error_type is None


def test_an_operation_that_raised_is_422_with_the_driver_s_type():
    found = problem("call", CallFailed(OperationFailed("ValueError", "no", "Traceback...")))
    assert (found.status, found.type, found.error_type) == (422, "OperationFailed", "ValueError")
    assert (found.detail, found.traceback, found.code) == ("ValueError: no", "Traceback...", 1)


def test_the_openapi_document_has_every_route_once():
    made = document()
    assert made["openapi"] == "3.1.0"
    operations = [(p, m) for p, methods in made["paths"].items() for m in methods]
    # and /v1/events, /v1/openapi.json, the session routes
    assert len(operations) == len(ROUTES) + 2 + len(SESSION_ROUTES)
    login = made["paths"]["/v1/login"]["post"]
    assert login["security"] == [{"bearer": []}]
    assert made["paths"]["/v1/logout"]["post"]["security"] == [{"session": [], "csrf": []}]
    answer = login["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/SessionAnswer"}
    ids = [op["operationId"] for methods in made["paths"].values() for op in methods.values()]
    assert len(set(ids)) == len(ids)
    call = made["paths"]["/v1/resources/{id}/calls/{operation}"]["post"]
    assert [p["name"] for p in call["parameters"]] == ["id", "operation", "timeout"]
    assert "Problem" in made["components"]["schemas"]


@pytest.mark.parametrize(
    ("listen", "tls", "address"),
    [
        ("127.0.0.1:8080", None, ("127.0.0.1", 8080)),
        ("[::1]:9", None, ("::1", 9)),
        ("localhost:80", None, ("localhost", 80)),
        ("0.0.0.0:8443", TlsSettings("c.pem", "k.pem"), ("0.0.0.0", 8443)),
    ],
)
def test_http_listen(listen, tls, address):
    assert HttpSettings(listen=listen, tls=tls).address() == address


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        ("0.0.0.0:8080", "is not a loopback address and http.tls is not set"),
        ("api.example:8080", "is not a loopback address"),
        ("8080", "is not HOST:PORT"),
        ("127.0.0.1:99999", "is not HOST:PORT"),
    ],
)
def test_http_listen_refused(listen, said):
    with pytest.raises(ConfigError, match=said):
        HttpSettings(listen=listen).address()
