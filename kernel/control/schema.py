"""Every control command's request and result, as msgspec Structs.

A request on the control socket is ``protocol.control.Request(command,
args)``; ``decode_request`` turns its ``args`` into the command's request
Struct (one of the tagged union ``ControlRequest``, tagged by the command's
name), so a handler in ``kernel/control/handlers.py`` receives typed fields and a
malformed request is a ``BadRequest`` naming the field. A handler returns the
command's result type. ``docs/control-schema.json`` is generated from these
types (``scripts/gen_control_schema.py``); drivebayctl's command table
(``kernel/control/ctl_commands.py``) declares the same request fields, and a test
checks that the two agree field by field.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec

from drivebay.protocol.control import Reply, Request
from drivebay.protocol.control_codes import EXIT_USAGE
from drivebay.protocol.errors import RequestError

Names = Annotated[list[str], msgspec.Meta(description="driver names (NAME or NAME@VERSION)")]
Stream = Annotated[Literal["stdout", "stderr"], msgspec.Meta(description="stdout or stderr")]
Lines = Annotated[int, msgspec.Meta(ge=0, description="a number of lines (0 or more)")]
Assignments = Annotated[list[str], msgspec.Meta(description="key=value or key:=JSON items")]
EventId = Annotated[
    str,
    msgspec.Meta(description="an event id (BOOT-SEQ) to read after, or 0 for all the ring holds"),
]
Count = Annotated[int, msgspec.Meta(ge=0, description="a number of events (0 or more)")]


class _Request(msgspec.Struct, frozen=True, tag_field="command", forbid_unknown_fields=True):
    """What every request shares: its tag is the command's name."""


# -- requests ----------------------------------------------------------------------------


class StatusRequest(_Request, frozen=True, tag="status"):
    names: Names = []


class StartRequest(_Request, frozen=True, tag="start"):
    names: Names = []


class StopRequest(_Request, frozen=True, tag="stop"):
    names: Names = []


class RestartRequest(_Request, frozen=True, tag="restart"):
    names: Names = []


class TailRequest(_Request, frozen=True, tag="tail"):
    name: str
    stream: Stream = "stdout"
    lines: Lines = 20


class TailFollowRequest(_Request, frozen=True, tag="tail-follow"):
    name: str
    stream: Stream = "stdout"
    lines: Lines = 20


class DescribeRequest(_Request, frozen=True, tag="describe"):
    name: str
    lang: str | None = None


class AvailRequest(_Request, frozen=True, tag="avail"):
    pass


class PidRequest(_Request, frozen=True, tag="pid"):
    name: str | None = None


class VersionRequest(_Request, frozen=True, tag="version"):
    pass


PageSize = Annotated[
    int, msgspec.Meta(ge=1, le=10_000, description="a number of resources (1 to 10000)")
]
After = Annotated[
    str, msgspec.Meta(description="a resource id: the page holds the ids after it, in order")
]


class ResourcesRequest(_Request, frozen=True, tag="resources"):
    """Every resource, ordered by id; with ``limit`` or ``after``, one page of
    them (a ``ResourcePage``)."""

    limit: PageSize | None = None
    after: After | None = None

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.after is not None


class ResourceAddRequest(_Request, frozen=True, tag="resource-add"):
    id: str
    driver: str
    version: str | None = None
    assignments: Assignments = []


class ResourceSetRequest(_Request, frozen=True, tag="resource-set"):
    id: str
    assignments: Assignments = []


class ResourceRmRequest(_Request, frozen=True, tag="resource-rm"):
    id: str


class ResourcePinRequest(_Request, frozen=True, tag="resource-pin"):
    id: str
    version: str | None = None


class CallRequest(_Request, frozen=True, tag="call"):
    resource: str
    op: Annotated[str, msgspec.Meta(description="a string")]
    args: Annotated[
        dict[str, Any], msgspec.Meta(description="a map of argument names to values")
    ] = {}
    timeout: (
        Annotated[float, msgspec.Meta(gt=0, le=1e9, description="a number of seconds above 0")]
        | None
    ) = None


class RepoAddRequest(_Request, frozen=True, tag="repo-add"):
    name: str
    url: Annotated[str, msgspec.Meta(description="http(s)://..., file://... or a directory")]
    root: Annotated[str, msgspec.Meta(description="the text of the trusted root.json")]


class RepoListRequest(_Request, frozen=True, tag="repo-list"):
    pass


class NodesRequest(_Request, frozen=True, tag="nodes"):
    """The nodes of the cluster this daemon is in (config ``cluster:``)."""


class DrainNodeRequest(_Request, frozen=True, tag="drain-node"):
    """Hand the resources of cluster node ``node_id`` to the other nodes (for
    maintenance): it claims nothing more and gives up each resource once its
    queue is idle. ``undo``: make it live again; ``force``: drain even when no
    other live node runs some of its drivers (those resources wait unowned);
    ``wait``: answer once it holds nothing, at most ``timeout`` seconds."""

    node_id: Annotated[str, msgspec.Meta(description="a node id, as nodes lists it")]
    undo: bool = False
    force: bool = False
    wait: bool = False
    timeout: Annotated[
        float, msgspec.Meta(gt=0, le=86400, description="a number of seconds above 0")
    ] = 60.0


class RepoRmRequest(_Request, frozen=True, tag="repo-rm"):
    name: str


class InstallRequest(_Request, frozen=True, tag="install"):
    name: str
    version: str | None = None
    repo: str | None = None


class EventsRequest(_Request, frozen=True, tag="events"):
    """The events the ring holds after ``since`` (all of them without it)."""

    since: EventId | None = None
    last: Count | None = None  # only the last this many


class EventsFollowRequest(_Request, frozen=True, tag="events-follow"):
    """As ``events``, then every new event as it happens; without ``since``,
    only new events."""

    since: EventId | None = None
    last: Count | None = None


class TokenNewRequest(_Request, frozen=True, tag="token-new"):
    """A new bearer token of ``role``, limited to drivers matching ``drivers``
    (globs; none: every driver). Its text is answered once; only its hash is kept."""

    role: Literal["viewer", "operator", "admin"]
    drivers: Annotated[list[str], msgspec.Meta(description="driver name globs")] = []


class TokenLsRequest(_Request, frozen=True, tag="token-ls"):
    """The bearer tokens the daemon knows (their hashes, never the tokens)."""


class TokenRmRequest(_Request, frozen=True, tag="token-rm"):
    """Remove a token ``token new`` made, named by its sha256 or the start of it."""

    id: Annotated[
        str,
        msgspec.Meta(description="a token's sha256 or its first 8 or more hex digits"),
    ]


class ReloadRequest(_Request, frozen=True, tag="reload"):
    pass


class ShutdownRequest(_Request, frozen=True, tag="shutdown"):
    pass


# Commands that change something or reach a driver: refused once the daemon
# is stopping (its store is closed, its drivers draining); reading ones are
# answered to the end.
CHANGING: frozenset[type[_Request]] = frozenset(
    {
        StartRequest,
        StopRequest,
        RestartRequest,
        ResourceAddRequest,
        ResourceSetRequest,
        ResourceRmRequest,
        ResourcePinRequest,
        CallRequest,
        DrainNodeRequest,
        RepoAddRequest,
        RepoRmRequest,
        InstallRequest,
        ReloadRequest,
        TokenNewRequest,
        TokenRmRequest,
    }
)


ControlRequest = (
    StatusRequest
    | StartRequest
    | StopRequest
    | RestartRequest
    | TailRequest
    | TailFollowRequest
    | DescribeRequest
    | AvailRequest
    | PidRequest
    | VersionRequest
    | ResourcesRequest
    | ResourceAddRequest
    | ResourceSetRequest
    | ResourceRmRequest
    | ResourcePinRequest
    | CallRequest
    | RepoAddRequest
    | RepoListRequest
    | NodesRequest
    | DrainNodeRequest
    | RepoRmRequest
    | InstallRequest
    | EventsRequest
    | EventsFollowRequest
    | ReloadRequest
    | ShutdownRequest
    | TokenNewRequest
    | TokenLsRequest
    | TokenRmRequest
)

# -- results -----------------------------------------------------------------------------


class StatusRow(msgspec.Struct, frozen=True):
    name: str
    version: str | None
    state: str
    pid: int | None = None
    uptime_s: float | None = None
    restarts: int = 0
    resources: int = 0
    message: str | None = None
    spare_pid: int | None = None
    next_retry_at: float | None = None  # FATAL: when it is tried again (epoch seconds)
    # trust.signatures: warn, and its bundle's signature is not trusted: why
    # ("unsigned", "signature: unknown key 1a2b..."); None otherwise.
    signature_warning: str | None = None
    update_available: str | None = None  # a newer version a repository offers (update check)


class Outcome(msgspec.Struct, frozen=True):
    """What start, stop or restart did to one driver; ``code`` is its exit status."""

    name: str
    ok: bool
    message: str
    code: int = 0


class PropertyInfo(msgspec.Struct, frozen=True):
    key: str
    type: str
    required: bool
    max_length: int | None
    label: str | None
    description: str | None
    label_text: str | None
    description_text: str | None


class OperationDetail(msgspec.Struct, frozen=True):
    """An operation as the driver's process read it with ``inspect``."""

    name: str
    signature: str  # "(name: str, size_gb: int) -> dict"
    summary: str  # the first line of its docstring
    is_async: bool = msgspec.field(name="async")


class Move(msgspec.Struct, frozen=True):
    at: float
    source: str = msgspec.field(name="from")
    target: str = msgspec.field(name="to")
    reason: str | None = None


class Description(StatusRow, frozen=True):
    resource_ids: list[str] = []
    description: str | None = None
    category: str | None = None
    entrypoint: str = ""
    requires: list[str] = []
    dependencies: list[str] = []
    idempotent: list[str] = []  # the manifest's operations a new owner may run again
    bundle: str = ""
    bundle_digest: str = ""
    stored_at: str = ""
    env_key: str = ""
    codec: str = ""
    loop: str = ""
    operations: list[str] = []
    operation_details: list[OperationDetail] = []
    limits: dict[str, int] = {}
    logs: dict[str, str] = {}
    properties: list[PropertyInfo] = []
    history: list[Move] = []
    signature: str = ""  # who signed and through which authority, or what is wrong
    signed_by: str | None = None  # the signing key's id, when the signature was checked
    certified_by: str | None = None  # the authority key's id whose certificate vouched


class AvailRow(msgspec.Struct, frozen=True):
    """A bundle in the drivers dir (``source`` drivers-dir) or one a repository
    offers (``source`` its name, ``verdict`` offered)."""

    file: str
    name: str | None
    version: str | None
    verdict: Literal["active", "available", "offered", "INVALID"]
    message: str | None
    signature_warning: str | None = None  # as in StatusRow
    source: str = "drivers-dir"
    installed: bool = True  # this version is in the drivers dir
    update_available: bool = False  # a repository offers a newer version of the driver


class NodeRow(msgspec.Struct, frozen=True):
    """A node of the cluster as its database lists it (docs/cluster.md)."""

    node_id: str
    state: Annotated[
        str,
        msgspec.Meta(
            description="live, draining, left, or silent (not left, heartbeat older than a lease)"
        ),
    ]
    last_heartbeat: Annotated[float, msgspec.Meta(description="epoch seconds, database time")]
    resources: Annotated[int, msgspec.Meta(description="leases it holds that have not ended")]
    lease_until: Annotated[
        float | None, msgspec.Meta(description="its latest lease's end, epoch seconds")
    ]
    draining: Annotated[
        bool, msgspec.Meta(description="asked to drain (drain-node), also when silent")
    ] = False


class RepoRow(msgspec.Struct, frozen=True):
    name: str
    url: str
    kept: bool  # added with repo add (kept in the state dir), not from the config file
    offers: int | None = None  # bundles it offers, when it was read
    message: str | None = None


class Installed(msgspec.Struct, frozen=True):
    name: str
    version: str
    repo: str
    file: str  # where it was placed in the drivers dir
    state: str  # the version's state after the install (available: not the newest)


class VersionInfo(msgspec.Struct, frozen=True):
    version: str
    protocol: tuple[int, int]


class ResourceRow(msgspec.Struct, frozen=True):
    id: str
    driver: str
    version: str | None
    pinned: str | None
    properties: dict[str, Any]
    state: str
    queued: int
    last_event: dict[str, Any] | None
    # In a cluster only: the node whose lease on it has not ended (null: none).
    node: str | None = None


class ResourcePage(msgspec.Struct, frozen=True):
    """One page of resources, ordered by id: at most ``limit`` of those after
    ``after``. ``next``: the ``after`` that asks for the next page (null: this
    is the last); ``total``: how many resources there are in all."""

    resources: list[ResourceRow]
    next: str | None
    total: int


class ResourceAdded(msgspec.Struct, frozen=True):
    id: str
    driver: str
    pinned: str | None
    properties: dict[str, Any]


class PropertiesSet(msgspec.Struct, frozen=True):
    id: str
    properties: dict[str, Any]


class ResourceRemoved(msgspec.Struct, frozen=True):
    id: str
    removed: bool = True


class ResourcePinned(msgspec.Struct, frozen=True):
    id: str
    pinned: str | None


class Reloaded(msgspec.Struct, frozen=True):
    changed_drivers: list[str]
    restart_needed: list[str]
    reloaded: bool = True


class TokenMade(msgspec.Struct, frozen=True):
    """A new bearer token: ``token`` is shown this once; ``sha256`` is what is kept."""

    token: str
    sha256: str
    role: str
    drivers: list[str] = []


class TokenRow(msgspec.Struct, frozen=True):
    """A bearer token as the daemon keeps it: ``id`` is the start of its
    sha256 (as audit lines name it); ``source`` says where it is kept:
    ``kept`` (``token new``, in the state dir: ``token rm`` removes it) or
    ``config`` (``authorization.tokens``: removed by editing the config file)."""

    id: str
    sha256: str
    role: str
    drivers: list[str]
    source: Literal["kept", "config"]


class ShuttingDown(msgspec.Struct, frozen=True):
    shutting_down: bool = True


EventType = Literal[
    "bundle.verified",  # a bundle in the drivers dir was read and accepted
    "bundle.invalid",  # ... or rejected (data.message says why)
    "driver.state",  # a driver version moved (data: from, to, reason; exit_status or signal)
    "driver.restart",  # restarted after an exit (data.restarts: how often so far)
    "driver.fatal",  # a crash loop: it gave up (data.reason, data.retry_at)
    "driver.spare",  # a warm spare was launched (data.pid), after any start wave
    "upgrade.started",  # resources begin moving from data.from to version
    "upgrade.switched",  # every resource moved to version
    "upgrade.finished",  # the old version (data.from) is drained and stopped
    "upgrade.rolled_back",  # version failed; data.to serves (again)
    "resource.added",
    "resource.changed",  # data.properties: the keys set; or data.pinned: the new pin
    "resource.removed",
    "update.available",  # a repository (data.repo) offers version of driver
    "audit",  # a changing request: data.who, data.what, data.outcome
    "gap",  # events were lost here (data.reason, data.missed); id is null
    "problem",  # a stream ends on this error (data: an RFC 9457 problem); id is null
]


class Event(msgspec.Struct, frozen=True):
    """One record of the daemon's event ring (``kernel/events.py``).

    ``id`` is ``BOOT-SEQ``: the daemon's boot id (random at each start) and a
    number that grows by one per event; null only on a ``gap`` and on the
    ``problem`` that ends a stream (never kept in the ring). ``time`` is
    epoch seconds. ``driver``, ``version`` and ``resource`` name what the
    event is about, where it is about one; ``data`` holds the rest.
    """

    id: str | None
    time: float
    type: EventType
    driver: str | None = None
    version: str | None = None
    resource: str | None = None
    data: dict[str, Any] = {}


RESULTS: dict[type[ControlRequest], Any] = {
    StatusRequest: list[StatusRow],
    StartRequest: list[Outcome],
    StopRequest: list[Outcome],
    RestartRequest: list[Outcome],
    TailRequest: Annotated[str, msgspec.Meta(description="the last lines of the stream")],
    TailFollowRequest: Annotated[
        str, msgspec.Meta(description="one chunk of the stream (replies with more=true)")
    ],
    DescribeRequest: Description,
    AvailRequest: list[AvailRow],
    PidRequest: Annotated[int | None, msgspec.Meta(description="a pid, null: not running")],
    VersionRequest: VersionInfo,
    ResourcesRequest: Annotated[
        list[ResourceRow] | ResourcePage,
        msgspec.Meta(description="every resource; with limit or after, a page of them"),
    ],
    ResourceAddRequest: ResourceAdded,
    ResourceSetRequest: PropertiesSet,
    ResourceRmRequest: ResourceRemoved,
    ResourcePinRequest: ResourcePinned,
    CallRequest: Annotated[Any, msgspec.Meta(description="what the operation returned")],
    RepoAddRequest: RepoRow,
    RepoListRequest: list[RepoRow],
    NodesRequest: list[NodeRow],
    DrainNodeRequest: Annotated[
        NodeRow, msgspec.Meta(description="the node after the command (with wait: drained)")
    ],
    RepoRmRequest: RepoRow,
    InstallRequest: Installed,
    EventsRequest: list[Event],
    EventsFollowRequest: Annotated[
        Event, msgspec.Meta(description="one event (replies with more=true)")
    ],
    ReloadRequest: Reloaded,
    ShutdownRequest: ShuttingDown,
    TokenNewRequest: TokenMade,
    TokenLsRequest: list[TokenRow],
    TokenRmRequest: TokenRow,
}
"""Each request type's result type."""

REQUESTS: dict[str, type[ControlRequest]] = {
    str(kind.__struct_config__.tag): kind for kind in RESULTS
}
"""Each command's request type, by the command's name on the wire."""


class BadRequest(RequestError):
    """A request drivebayctl never sends: an unknown command, a field missing,
    unknown or of the wrong type. The client's fault; exit 2."""

    exit_code = EXIT_USAGE


def decode_request(command: str, args: object) -> ControlRequest:
    """The request Struct of ``command`` from its ``args`` (MessagePack bytes
    as ``msgspec.Raw``, or plain values); BadRequest naming the field that is
    wrong."""
    kind = REQUESTS.get(command)
    if kind is None:
        raise BadRequest(f"unknown command {command!r} (known: {', '.join(sorted(REQUESTS))})")
    try:
        if isinstance(args, msgspec.Raw):
            return _decoder(kind).decode(args)
        return msgspec.convert(args, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"bad request for {command}: {_explained(kind, str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"bad request for {command}: {exc}") from None


@functools.cache
def _decoder(kind: type[ControlRequest]) -> msgspec.msgpack.Decoder[ControlRequest]:
    return msgspec.msgpack.Decoder(kind)


def _explained(kind: type[ControlRequest], error: str) -> str:
    """msgspec's ``Expected `float | null`, got `str` - at `$.timeout```, said as
    what the field must be (its description) and msgspec's words."""
    _, at, path = error.rpartition(" - at `$.")
    if not at:
        return error
    field = path.rstrip("`").split(".", 1)[0].split("[", 1)[0]
    must = _descriptions(kind).get(field)
    return f"{field} must be {must} ({error})" if must else error


def _descriptions(kind: type[ControlRequest]) -> dict[str, str]:
    info = msgspec.inspect.type_info(kind)
    found: dict[str, str] = {}
    for field in info.fields:  # type: ignore[attr-defined]
        described = _description(field.type)
        if described:
            found[field.encode_name] = described
    return found


def _description(kind: msgspec.inspect.Type) -> str | None:
    if isinstance(kind, msgspec.inspect.UnionType):
        return next(filter(None, map(_description, kind.types)), None)
    if isinstance(kind, msgspec.inspect.Metadata):
        extra = kind.extra_json_schema or {}
        return str(extra["description"]) if "description" in extra else None
    return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every request and result: ``{"envelope": {request,
    reply}, "requests": {command: ref}, "results": {command: schema}, "$defs":
    {...}}``."""
    kinds = list(RESULTS)
    results = [RESULTS[kind] for kind in kinds]
    (request, reply, *schemas), components = msgspec.json.schema_components(
        [Request, Reply, *kinds, *results], ref_template="#/$defs/{name}"
    )
    names = list(REQUESTS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "drivebay control commands",
        "description": (
            "A request is {type: request, id, command, args}; args is the command's request "
            "(its 'command' tag is the command word, and may be left out); each reply's result "
            "is the command's result."
        ),
        "envelope": {"request": request, "reply": reply},
        "requests": dict(zip(names, schemas[: len(kinds)], strict=True)),
        "results": dict(zip(names, schemas[len(kinds) :], strict=True)),
        "$defs": components,
    }
