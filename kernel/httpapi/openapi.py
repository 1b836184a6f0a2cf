"""``GET /v1/openapi.json``: an OpenAPI 3.1 document generated from the route
table (``routes.ROUTES``) and the control schema's Structs, nothing written
by hand: each route's parameters and body are its request Struct's fields as
the route fills them, its answer the command's result type, and every error
a ``Problem``. The admin page's session routes (``sessions.SESSION_ROUTES``)
are there with their answers' Structs and the credentials they need
(``securitySchemes``)."""

from __future__ import annotations

import re
import typing
from typing import Any

import msgspec

import drivebay
from drivebay.kernel.control.handlers import STREAMS
from drivebay.kernel.control.schema import RESULTS, ControlRequest
from drivebay.kernel.httpapi.problems import Problem
from drivebay.kernel.httpapi.routes import EVENTS, ROUTES, Route
from drivebay.kernel.httpapi.sessions import (
    COOKIE,
    CSRF_HEADER,
    SESSION_ROUTES,
    SessionRoute,
)

REF = "#/components/schemas/{name}"
CODE_HEADER = "Drivebay-Code"
TEXT = {"text/plain": {"schema": {"type": "string"}}}
SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "drivebayctl token new"},
    "session": {"type": "apiKey", "in": "cookie", "name": COOKIE},
    "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER},
}


def result_type(route: Route) -> Any:
    """The type a route answers with: the command's result, or one row of its list."""
    result = RESULTS[route.kind]
    if not route.one:
        return result
    if typing.get_origin(result) is typing.Annotated:
        result = typing.get_args(result)[0]
    members = typing.get_args(result) if typing.get_origin(result) is not list else (result,)
    listed = next(member for member in members if typing.get_origin(member) is list)
    return typing.get_args(listed)[0]


def document(
    routes: tuple[Route, ...] = (*ROUTES, EVENTS),
    session_routes: tuple[SessionRoute, ...] = SESSION_ROUTES,
) -> dict[str, Any]:
    kinds = list(dict.fromkeys(route.kind for route in routes))
    results = [result_type(route) for route in routes]
    (problem, *schemas), components = msgspec.json.schema_components(
        [Problem, *kinds, *results, *(route.answer for route in session_routes)],
        ref_template=REF,
    )
    requests = {
        kind: _resolved(s, components) for kind, s in zip(kinds, schemas[: len(kinds)], strict=True)
    }
    answers = schemas[len(kinds) : len(kinds) + len(routes)]
    paths: dict[str, dict[str, Any]] = {}
    for route, answer in zip(routes, answers, strict=True):
        operation = _operation(route, requests[route.kind], answer, problem)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    sessions = schemas[len(kinds) + len(routes) :]
    for session_route, answer in zip(session_routes, sessions, strict=True):
        operation = _session_operation(session_route, answer, problem)
        paths.setdefault(session_route.path, {})[session_route.method.lower()] = operation
    paths["/v1/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "this document",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "drivebay",
            "version": drivebay.__version__,
            "description": "drivebayd's HTTP API: the control commands under /v1 (docs/api.md).",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY},
    }


def _session_operation(
    route: SessionRoute, answer: dict[str, Any], problem: dict[str, Any]
) -> dict[str, Any]:
    ok = {
        "description": f"{route.name}: {route.answer.__name__}",
        "content": {"application/json": {"schema": answer}},
    }
    if route.name == "login":
        ok["headers"] = {
            "Set-Cookie": {"description": "the session's cookie", "schema": {"type": "string"}}
        }
    return {
        "operationId": route.name,
        "summary": route.summary,
        "security": [{need: [] for need in route.needs}],
        "parameters": [],
        "responses": {
            "200": ok,
            "default": {
                "description": "a problem (RFC 9457): 401 without the credentials, 403 refused",
                "content": {"application/problem+json": {"schema": problem}},
            },
        },
    }


def _resolved(ref: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[1]
    found: dict[str, Any] = components[name]
    return found


def _operation(
    route: Route, request: dict[str, Any], answer: dict[str, Any], problem: dict[str, Any]
) -> dict[str, Any]:
    params = re.findall(r"\{(\w+)\}", route.path)
    free = {
        name: spec
        for name, spec in request.get("properties", {}).items()
        if name != "command" and name not in route.fields
    }
    required = set(request.get("required", [])) - {"command"}
    in_body = _body_fields(route, free)
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in params
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": spec}
        for name, spec in free.items()
        if name not in in_body
    ]
    if route.follow is not None:
        parameters.append(
            {"name": "follow", "in": "query", "required": False, "schema": {"type": "string"}}
        )
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "description": f"The `{route.command}` command.",
        "parameters": parameters,
        "responses": {
            "200": _answer(route, answer),
            "default": {
                "description": "a problem (RFC 9457): type is the drivebay error's name",
                "content": {"application/problem+json": {"schema": problem}},
            },
        },
    }
    body = _body_schema(route, free, in_body, required)
    if body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _body_fields(route: Route, free: dict[str, Any]) -> set[str]:
    if route.body == "fields":
        return set(free)
    if route.body == "args":
        return {"args"}
    if route.body == "properties":
        return {"assignments"}
    return set()


def _body_schema(
    route: Route, free: dict[str, Any], in_body: set[str], required: set[str]
) -> dict[str, Any] | None:
    if route.body == "none":
        return None
    if route.body == "args":
        return {"type": "object", "description": "the operation's arguments by name"}
    if route.body == "properties":
        return {"type": "object", "description": "property values to set; null removes one"}
    properties = {name: free[name] for name in sorted(in_body)}
    if "assignments" in properties:
        properties["properties"] = {
            "type": "object",
            "description": "property values (each becomes a key:=JSON assignment)",
        }
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(required & in_body),
        "additionalProperties": False,
    }


def _answer(route: Route, answer: dict[str, Any]) -> dict[str, Any]:
    kind: type[ControlRequest] = route.kind
    if kind in STREAMS:
        return {"description": "the output as it comes (chunked)", "content": TEXT}
    response = _json(f"the {route.command} command's result", answer)
    if route is EVENTS:
        stream = {"schema": {"type": "string"}}
        response["content"].update({"text/event-stream": stream, "application/x-ndjson": stream})
        response["description"] += (
            "; with Accept text/event-stream or application/x-ndjson, a stream"
        )
    if route.follow is not None:
        response["content"].update(TEXT)
        response["description"] += "; with follow=1, the output as it comes (text/plain)"
    return response


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            CODE_HEADER: {
                "description": "the exit status drivebayctl would use (0: all went well)",
                "schema": {"type": "integer"},
            }
        },
        "content": {"application/json": {"schema": schema}},
    }


def _operation_id(route: Route) -> str:
    words = re.sub(r"[{}]", "", route.path.removeprefix("/v1/")).replace("-", "_").split("/")
    return "_".join([route.method.lower(), *words])
