"""The HTTP API's routes: one table from (method, path) to a control command.

Each ``Route`` names the command's request Struct (``kernel/control/schema.py``)
and says where its fields come from: ``fields`` are set from the path
(templates over its ``{params}``), ``body`` says what the JSON body holds, and
any other field of the request may be given in the query string
(``?lines=50``). The server hands the request to the handler the control
socket uses (``HANDLERS``, ``STREAMS``); the OpenAPI document is generated
from this table and the Structs. ``POST /v1/commands/{command}`` reaches every
command by its name with the request's fields as the body: what
``drivebay.client`` sends.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from drivebay.kernel.control import schema
from drivebay.kernel.control.schema import BadRequest, ControlRequest, decode_request
from drivebay.protocol.errors import NoSuchName

Body = Literal["none", "fields", "args", "properties"]
"""What a route's JSON body is: nothing; the request's fields (a ``properties``
object standing for ``assignments``); the operation's arguments (``args``);
the properties to change (``assignments``)."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp's and OpenAPI's syntax alike: /v1/drivers/{name}
    kind: type[ControlRequest]
    fields: Mapping[str, Any] = field(default_factory=dict)  # str values: templates
    body: Body = "none"
    follow: type[ControlRequest] | None = None  # ?follow=1: this (streaming) request
    one: str | None = None  # the result is the row whose field of that name is the param
    summary: str = ""

    @property
    def command(self) -> str:
        return command_of(self.kind)

    def request(
        self, params: Mapping[str, str], query: Mapping[str, list[str]], body: object
    ) -> ControlRequest:
        """The request Struct from the path's ``params``, the ``query`` (each
        parameter's values) and the decoded JSON ``body`` (None: none sent);
        ``BadRequest`` naming what is wrong."""
        kind = self.kind
        if query and self.follow is not None:
            query = dict(query)
            if _truthy(query.pop("follow", ["0"])[-1]):
                kind = self.follow
        values = {key: _filled(value, params) for key, value in self.fields.items()}
        if query:
            values.update(_from_query(kind, query, values))
        if body is not None or self.body != "none":
            values.update(_from_body(self.body, body))
        return decode_request(command_of(kind), values)

    def picked(self, result: Any, params: Mapping[str, str]) -> Any:
        """The result as this route answers it: one row of a list for ``one``."""
        if self.one is None:
            return result
        wanted = params[self.one]
        for row in result:  # a Struct, or a dict of its fields
            found = row.get(self.one) if isinstance(row, dict) else getattr(row, self.one)
            if found == wanted:
                return row
        raise NoSuchName(f"no resource {wanted!r}; GET /v1/resources lists them")


def command_of(kind: type[ControlRequest]) -> str:
    return str(kind.__struct_config__.tag)


def _truthy(text: str) -> bool:
    return text.lower() not in ("", "0", "false", "no")


def _filled(template: Any, params: Mapping[str, str]) -> Any:
    if isinstance(template, str):
        return template.format_map(params)
    if isinstance(template, list):
        return [_filled(item, params) for item in template]
    return template


def _from_query(
    kind: type[ControlRequest], query: Mapping[str, list[str]], fixed: Mapping[str, Any]
) -> dict[str, Any]:
    """The request fields given as query parameters, converted from text."""
    types = _field_types(kind)
    found: dict[str, Any] = {}
    for key, values in query.items():
        if key not in types or key in fixed:
            free = sorted(set(types) - set(fixed))
            raise BadRequest(
                f"unknown query parameter {key!r} for {command_of(kind)} "
                f"(known: {', '.join(free) or 'none'})"
            )
        wanted = types[key]
        given: object = values if _is_list(wanted) else values[-1]
        try:
            found[key] = msgspec.convert(given, wanted, strict=False)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"query parameter {key}: {exc}") from None
    return found


@functools.cache
def _field_types(kind: type[ControlRequest]) -> dict[str, Any]:
    """Each field's type by its name (once per kind: ``structs.fields`` evaluates
    the annotations every time, costing more than the rest of a request)."""
    return {f.encode_name: f.type for f in msgspec.structs.fields(kind)}


def _is_list(kind: Any) -> bool:
    info = msgspec.inspect.type_info(kind)
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return isinstance(info, msgspec.inspect.ListType)


def _from_body(body: Body, data: object) -> dict[str, Any]:
    if body == "none":
        if data not in (None, {}):
            raise BadRequest("this request takes no body")
        return {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if body == "args":
        return {"args": data}
    if body == "properties":
        return {"assignments": assignments(data)}
    fields = dict(data)
    if "properties" in fields:
        properties = fields.pop("properties")
        if not isinstance(properties, dict):
            raise BadRequest("properties must be a JSON object of property values")
        fields["assignments"] = [*fields.get("assignments", []), *assignments(properties)]
    return fields


def assignments(properties: Mapping[str, Any]) -> list[str]:
    """Property values as the ``key:=JSON`` words the resource commands take
    (JSON null removes a key)."""
    words = []
    for key, value in properties.items():
        if "=" in key or not key:
            raise BadRequest(f"property name {key!r}: must be non-empty, without '='")
        words.append(f"{key}:={json.dumps(value)}")
    return words


S = schema
DRIVER = {"name": "{name}@{version}"}
NAMED = {"names": ["{name}"]}
RESOURCE = {"id": "{id}"}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/version", S.VersionRequest, summary="drivebayd's version"),
    Route("GET", "/v1/pid", S.PidRequest, summary="drivebayd's pid"),
    Route("GET", "/v1/drivers", S.StatusRequest, summary="every driver version's state"),
    Route("GET", "/v1/drivers/{name}", S.StatusRequest, NAMED, summary="a driver's versions"),
    Route("GET", "/v1/drivers/{name}/{version}", S.DescribeRequest, DRIVER, summary="describe"),
    Route("GET", "/v1/drivers/{name}/{version}/pid", S.PidRequest, DRIVER, summary="its pid"),
    Route(
        "GET",
        "/v1/drivers/{name}/{version}/logs",
        S.TailRequest,
        DRIVER,
        follow=S.TailFollowRequest,
        summary="the tail of its stdout or stderr; follow=1 streams new output",
    ),
    Route("POST", "/v1/drivers/{name}/start", S.StartRequest, NAMED, summary="start"),
    Route("POST", "/v1/drivers/{name}/stop", S.StopRequest, NAMED, summary="stop"),
    Route("POST", "/v1/drivers/{name}/restart", S.RestartRequest, NAMED, summary="restart"),
    Route(
        "POST",
        "/v1/drivers/{name}/install",
        S.InstallRequest,
        {"name": "{name}"},
        body="fields",
        summary="install from a repository",
    ),
    Route("GET", "/v1/avail", S.AvailRequest, summary="bundles installed and offered"),
    Route(
        "GET",
        "/v1/resources",
        S.ResourcesRequest,
        summary="every resource, ordered by id; with limit or after, one page of them",
    ),
    Route("POST", "/v1/resources", S.ResourceAddRequest, body="fields", summary="add one"),
    Route(
        "GET",
        "/v1/resources/{id}",
        S.ResourcesRequest,
        {"limit": None, "after": None},
        one="id",
        summary="one resource",
    ),
    Route(
        "PATCH",
        "/v1/resources/{id}",
        S.ResourceSetRequest,
        RESOURCE,
        body="properties",
        summary="change properties (null removes one)",
    ),
    Route("DELETE", "/v1/resources/{id}", S.ResourceRmRequest, RESOURCE, summary="remove"),
    Route(
        "PUT",
        "/v1/resources/{id}/pin",
        S.ResourcePinRequest,
        RESOURCE,
        body="fields",
        summary="pin",
    ),
    Route(
        "DELETE",
        "/v1/resources/{id}/pin",
        S.ResourcePinRequest,
        {"id": "{id}", "version": None},
        summary="unpin: follow the newest version",
    ),
    Route(
        "POST",
        "/v1/resources/{id}/calls/{operation}",
        S.CallRequest,
        {"resource": "{id}", "op": "{operation}"},
        body="args",
        summary="run an operation: the arguments in, its result out",
    ),
    Route("GET", "/v1/repositories", S.RepoListRequest, summary="repositories"),
    Route("GET", "/v1/nodes", S.NodesRequest, summary="the nodes of this daemon's cluster"),
    Route(
        "POST",
        "/v1/nodes/{node_id}/drain",
        S.DrainNodeRequest,
        {"node_id": "{node_id}", "undo": False},
        body="fields",
        summary="hand the node's resources to the others (wait, timeout, force in the body)",
    ),
    Route(
        "DELETE",
        "/v1/nodes/{node_id}/drain",
        S.DrainNodeRequest,
        {"node_id": "{node_id}", "undo": True},
        summary="undo a drain: the node claims its share again",
    ),
    Route("POST", "/v1/repositories", S.RepoAddRequest, body="fields", summary="add one"),
    Route(
        "DELETE", "/v1/repositories/{name}", S.RepoRmRequest, {"name": "{name}"}, summary="remove"
    ),
    Route("GET", "/v1/tokens", S.TokenLsRequest, summary="the bearer tokens, by their hashes"),
    Route(
        "POST", "/v1/tokens", S.TokenNewRequest, body="fields", summary="a new token, shown once"
    ),
    Route(
        "DELETE",
        "/v1/tokens/{id}",
        S.TokenRmRequest,
        {"id": "{id}"},
        summary="remove a token token new made (id: its sha256 or 8+ hex digits of it)",
    ),
    Route("POST", "/v1/reload", S.ReloadRequest, summary="re-read the config file"),
    Route("POST", "/v1/shutdown", S.ShutdownRequest, summary="stop drivebayd"),
    *(
        Route("POST", f"/v1/commands/{name}", kind, body="fields", summary=f"the {name} command")
        for name, kind in S.REQUESTS.items()
    ),
)

EVENTS = Route(
    "GET",
    "/v1/events",
    S.EventsRequest,
    summary="the event ring; as SSE or NDJSON (by Accept) it stays open (kernel/httpapi/events.py)",
)
"""Served by its own handler: the ``events`` list, or a stream by ``Accept``."""
