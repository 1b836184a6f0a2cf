"""What each control command does, as typed data in and data out.

Every handler takes the kernel and the command's request Struct
(``kernel/control/schema.py``) and returns ``(result, exit code)``, the
result of the command's result type, or raises a ``RequestError`` whose
message is the one line drivebayctl prints (and whose ``exit_code`` it exits
with). Any other exception is a bug in the daemon. Formatting for humans is
drivebayctl's job (``kernel/control/ctl_commands.py``); ``--json`` prints ``result``.
Streaming commands (``tail -f``, ``events -f``) are async generators of
results, each sent as one reply with ``more=True``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

import drivebay
from drivebay.kernel.control import schema
from drivebay.kernel.control.scope import status_code
from drivebay.kernel.drivers.descriptors import HOLDS_PLACE, places_held
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.repos.sources import add_kept, remove_kept, sources
from drivebay.kernel.resources.catalog import load_catalog
from drivebay.protocol.control_codes import (
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
)
from drivebay.protocol.errors import (
    DrivebayError,
    KernelError,
    NoSuchName,
    OperationFailed,
    RequestError,
)
from drivebay.protocol.versions import PROTOCOL_MAX, PROTOCOL_MIN
from drivebay.sandbox.pep440 import version_key

if TYPE_CHECKING:
    from drivebay.kernel.config import TokenRule
    from drivebay.kernel.drivers.slot import DriverSlot
    from drivebay.kernel.kernel import Kernel
    from drivebay.kernel.resources.book import ResourceBook
    from drivebay.sandbox.trust import SignatureCheck

Outcome = tuple[Any, int]
Handler = Callable[["Kernel", Any], Awaitable[Outcome]]
Stream = Callable[["Kernel", Any], AsyncIterator[Any]]

HANDLERS: dict[type[schema.ControlRequest], Handler] = {}
STREAMS: dict[type[schema.ControlRequest], Stream] = {}


def command(kind: type[schema.ControlRequest]) -> Callable[[Handler], Handler]:
    """Register the handler of requests of type ``kind``."""

    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = handler
        return handler

    return register


# -- reading -------------------------------------------------------------------------


def status_row(k: Kernel, slot: DriverSlot, resources: int | None = None) -> schema.StatusRow:
    """The slot's row; ``resources``: how many are bound to it, when the
    caller counted them for every slot at once (``ResourceBook.bound_counts``)."""
    if resources is None:
        resources = len(k.book.bound_to(slot)) if k.book is not None else 0
    uptime = slot.uptime
    return schema.StatusRow(
        name=slot.manifest.name,
        version=slot.manifest.version,
        state=str(slot.state),
        pid=slot.pid,
        uptime_s=None if uptime is None else round(uptime, 3),
        restarts=slot.restarts.total,
        resources=resources,
        message=slot.lifecycle.reason,
        spare_pid=slot.spare_pid,
        next_retry_at=slot.next_retry_at,
        signature_warning=_signature_warning(k.registry.signature_of(slot.bundle)),
        update_available=_update(k, slot),
    )


def _signature_warning(check: SignatureCheck | None) -> str | None:
    return None if check is None else check.warning


def _update(k: Kernel, slot: DriverSlot) -> str | None:
    """The newer version the last update check found for this driver, if any."""
    offer = k.repos.updates.get(slot.manifest.name)
    if offer is None or version_key(offer.version) <= version_key(slot.manifest.version):
        return None
    return offer.version


@command(schema.StatusRequest)
async def status(k: Kernel, request: schema.StatusRequest) -> Outcome:
    slots = list(k.all_slots())
    bound = k.book.bound_counts() if k.book is not None and slots else {}
    rows = [status_row(k, slot, bound.get(slot, 0)) for slot in slots]
    for entry in k.registry.invalid():
        rows.append(
            schema.StatusRow(
                name=entry.path.name,
                version=None,
                state=str(State.INVALID),
                message=k.registry.verdict(entry),
            )
        )
    names = request.names
    if names:
        rows = [row for row in rows if _matches(row, names)]
        missing = [n for n in names if not any(_matches(row, [n]) for row in rows)]
        if missing:
            k.slot(missing[0])  # raises NoSuchName with the known names
    rows.sort(key=lambda row: (row.name, row.version or ""))
    return rows, status_code(rows)


def _matches(row: schema.StatusRow, names: list[str]) -> bool:
    full = f"{row.name}@{row.version}" if row.version else row.name
    return row.name in names or full in names


@command(schema.DescribeRequest)
async def describe(k: Kernel, request: schema.DescribeRequest) -> Outcome:
    slot = k.slot(request.name)
    manifest = slot.manifest
    catalog = load_catalog(slot.bundle.path, request.lang or None)
    process = slot.process
    signature = k.registry.signature_of(slot.bundle)
    return schema.Description(
        **msgspec.structs.asdict(status_row(k, slot)),
        resource_ids=[a.resource_id for a in k.book.bound_to(slot)] if k.book else [],
        description=manifest.description,
        category=manifest.category,
        entrypoint=manifest.entrypoint,
        requires=list(manifest.requires),
        dependencies=list(manifest.dependencies),
        idempotent=list(manifest.idempotent),
        bundle=str(slot.bundle.source),
        bundle_digest=slot.bundle.digest,
        stored_at=str(slot.bundle.path),
        env_key=slot.env_key,
        codec=process.hello_codec if process else "",
        loop=process.hello_loop if process else "",
        operations=list(process.ready.operations) if process and process.ready else [],
        operation_details=operation_details(slot),
        limits=slot.rlimits(),
        logs={stream: str(path) for stream, path in slot.log_paths().items()},
        properties=[
            schema.PropertyInfo(
                key=prop.key,
                type=prop.type,
                required=prop.required,
                max_length=prop.max_length,
                label=prop.label,
                description=prop.description,
                label_text=catalog.text(prop.label),
                description_text=catalog.text(prop.description),
            )
            for prop in manifest.properties
        ],
        history=[
            schema.Move(at=t.at, source=str(t.source), target=str(t.target), reason=t.reason)
            for t in slot.lifecycle.history
        ],
        signature=(signature.summary() if signature else "not checked (trust.signatures: off)"),
        signed_by=signature.key_id if signature else None,
        certified_by=signature.authority if signature and not signature.problem else None,
    ), EXIT_OK


def operation_details(slot: DriverSlot) -> list[schema.OperationDetail]:
    """Each operation's signature and summary, as its running process read them."""
    ready = slot.process.ready if slot.process else None
    if ready is None:
        return []
    return [
        schema.OperationDetail(
            name=name, signature=info.signature, summary=info.summary, is_async=info.is_async
        )
        for name, info in sorted(ready.details.items())
    ]


@command(schema.AvailRequest)
async def avail(k: Kernel, request: schema.AvailRequest) -> Outcome:
    rows = []
    offers, failed = await k.repos.offers(k.config)
    newest_offered: dict[str, str] = {}
    for offer in offers:
        known = newest_offered.get(offer.name)
        if known is None or version_key(offer.version) > version_key(known):
            newest_offered[offer.name] = offer.version
    installed: dict[str, set[str]] = {}
    for path, entry in sorted(k.registry.entries.items()):
        bundle = entry.bundle
        verdict = k.registry.verdict(entry)
        if bundle is None or verdict is not None:
            rows.append(schema.AvailRow(path.name, None, None, "INVALID", verdict))
            continue
        manifest = bundle.manifest
        installed.setdefault(manifest.name, set()).add(manifest.version)
        slot = k.slots.get(f"{manifest.name}@{manifest.version}")
        active = slot is not None and slot.bundle.digest == bundle.digest
        rows.append(
            schema.AvailRow(
                path.name,
                manifest.name,
                manifest.version,
                "active" if active else "available",
                manifest.description,
                _signature_warning(bundle.signature),
            )
        )
    newest_installed = {
        name: max(versions, key=version_key) for name, versions in installed.items()
    }
    rows = [
        msgspec.structs.replace(
            row, update_available=_newer(newest_offered, row.name, newest_installed)
        )
        if row.name
        else row
        for row in rows
    ]
    for offer in offers:
        here = offer.version in installed.get(offer.name, set())
        rows.append(
            schema.AvailRow(
                offer.path,
                offer.name,
                offer.version,
                "offered",
                offer.category,
                source=offer.repo,
                installed=here,
                update_available=_newer(newest_offered, offer.name, newest_installed),
            )
        )
    for repo, line in sorted(failed.items()):
        rows.append(schema.AvailRow("-", None, None, "INVALID", line, source=repo, installed=False))
    return rows, EXIT_OK


def _newer(offered: dict[str, str], name: str | None, installed: dict[str, str]) -> bool:
    """Does a repository offer a version of ``name`` above the newest installed one?"""
    if name is None or name not in offered or name not in installed:
        return False
    return version_key(offered[name]) > version_key(installed[name])


@command(schema.PidRequest)
async def pid(k: Kernel, request: schema.PidRequest) -> Outcome:
    if not request.name:
        return os.getpid(), EXIT_OK
    slot = k.slot(request.name)
    if slot.pid is None:
        return None, EXIT_NOT_RUNNING
    return slot.pid, EXIT_OK


@command(schema.VersionRequest)
async def version(k: Kernel, request: schema.VersionRequest) -> Outcome:
    return schema.VersionInfo(drivebay.__version__, (PROTOCOL_MIN, PROTOCOL_MAX)), EXIT_OK


@command(schema.TailRequest)
async def tail(k: Kernel, request: schema.TailRequest) -> Outcome:
    slot = k.slot(request.name)
    return read_tail(slot.log_paths()[request.stream], request.lines), EXIT_OK


def read_tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    kept = text.splitlines(keepends=True)[-lines:] if lines else []
    return "".join(kept)


async def tail_follow(k: Kernel, request: schema.TailFollowRequest) -> AsyncIterator[str]:
    """The tail, then every new chunk the driver writes to that stream."""
    slot = k.slot(request.name)
    wanted = request.stream
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    def listener(stream: str, data: bytes) -> None:
        if stream == wanted and not queue.full():
            queue.put_nowait(data.decode("utf-8", "replace"))

    def on_move(state: State) -> None:
        if slot.closed and state is State.STOPPED:
            queue.put_nowait("")  # retired or removed: end the stream

    slot.output_listeners.add(listener)
    unsubscribe = slot.lifecycle.listen(on_move)
    try:
        yield read_tail(slot.log_paths()[wanted], request.lines)
        while chunk := await queue.get():
            yield chunk
    finally:
        unsubscribe()
        slot.output_listeners.discard(listener)


STREAMS[schema.TailFollowRequest] = tail_follow


@command(schema.EventsRequest)
async def events(k: Kernel, request: schema.EventsRequest) -> Outcome:
    since = "0" if request.since is None else request.since
    return k.events.cursor(since, request.last).take(), EXIT_OK


async def events_follow(
    k: Kernel, request: schema.EventsFollowRequest
) -> AsyncIterator[schema.Event]:
    """As ``events``, then each new event; without ``since`` (nor ``last``),
    only new events."""
    since = request.since
    if since is None and request.last is not None:
        since = "0"  # the last few, then what comes (tail -f -n)
    async for event in k.events.subscribe(since, request.last):
        yield event


STREAMS[schema.EventsFollowRequest] = events_follow


# -- acting --------------------------------------------------------------------------


def _targets(k: Kernel, names: list[str]) -> list[DriverSlot]:
    if not names:
        raise RequestError("name a driver, or say all")
    if "all" in names:
        return list(k.slots.values())
    return [k.slot(name) for name in names]


@command(schema.StartRequest)
async def start(k: Kernel, request: schema.StartRequest | schema.RestartRequest) -> Outcome:
    targets = _targets(k, request.names)
    refused = _beyond_descriptor_limit(k, targets)

    async def one(slot: DriverSlot) -> schema.Outcome:
        if slot.state is State.RUNNING:
            return schema.Outcome(slot.name, True, "already started")
        if slot in refused:
            return schema.Outcome(slot.name, False, k.descriptors.refusal(), EXIT_FAILURE)
        unmet = [n for n in slot.manifest.requires if not k.running(n)]
        if unmet:
            message = f"requires {', '.join(unmet)}, which is not running"
            return schema.Outcome(slot.name, False, message, EXIT_FAILURE)
        try:
            k.forget_failure(slot)
        except KernelError as exc:  # the state store refused: it stays FAILED
            return schema.Outcome(slot.name, False, str(exc), EXIT_FAILURE)
        slot.held = False
        slot.want_running(reset=True)
        await asyncio.sleep(0)
        # BACKOFF is not an answer: the slot retries until RUNNING or FATAL.
        state = await slot.wait_settled(
            _budget(k), frozenset({State.RUNNING, State.FATAL, State.FAILED, State.BLOCKED})
        )
        if state is State.RUNNING:
            return schema.Outcome(slot.name, True, "started")
        message = f"{state}: {slot.lifecycle.reason}"
        return schema.Outcome(slot.name, False, message, EXIT_FAILURE)

    results = await asyncio.gather(*(one(slot) for slot in targets))
    k.kick()
    return results, max((r.code for r in results), default=EXIT_OK)


def _beyond_descriptor_limit(k: Kernel, targets: list[DriverSlot]) -> list[DriverSlot]:
    """The ``targets`` a start would take past what the descriptor limit allows."""
    holding = places_held(slot.state for slot in k.all_slots())
    refused = []
    for slot in targets:
        if slot.state in HOLDS_PLACE:
            continue
        if k.descriptors.admits(holding):
            holding += 1
        else:
            refused.append(slot)
    return refused


@command(schema.StopRequest)
async def stop(k: Kernel, request: schema.StopRequest | schema.RestartRequest) -> Outcome:
    async def one(slot: DriverSlot) -> schema.Outcome:
        slot.held = True
        if slot.state in (State.STOPPED, State.INVALID):
            return schema.Outcome(slot.name, False, "not running", EXIT_NOT_RUNNING)
        # Running, or on its way (building, starting, backing off) or stuck
        # (FATAL, FAILED, BLOCKED): in every case it ends STOPPED.
        slot.want_stopped()
        await slot.wait_settled(_budget(k), frozenset({State.STOPPED}))
        return schema.Outcome(slot.name, True, "stopped")

    # Dependents first, each wave concurrently, as at shutdown.
    results = await k.stop_in_waves(_targets(k, request.names), one)
    return results, max((r.code for r in results), default=EXIT_OK)


@command(schema.RestartRequest)
async def restart(k: Kernel, request: schema.RestartRequest) -> Outcome:
    stopped, _ = await stop(k, request)
    started, code = await start(k, request)
    return [*stopped, *started], code


# -- cluster -----------------------------------------------------------------------------


@command(schema.NodesRequest)
async def nodes(k: Kernel, request: schema.NodesRequest) -> Outcome:
    if k.cluster is None:
        raise RequestError(
            "this daemon is not in a cluster; add a cluster: section (database, node_id) to "
            "its config and restart drivebayd (docs/cluster.md)"
        )
    return await k.cluster.node_rows(), EXIT_OK


# -- repositories ------------------------------------------------------------------------


@command(schema.RepoListRequest)
async def repo_list(k: Kernel, request: schema.RepoListRequest) -> Outcome:
    found, problems = await asyncio.to_thread(sources, k.config)
    rows = [schema.RepoRow(s.name, s.url, s.kept) for s in found]
    for line in problems:
        name = line.split(":", 1)[0].removeprefix("repository ")
        rows.append(schema.RepoRow(name, "", False, message=line))
    return rows, EXIT_OK


@command(schema.RepoAddRequest)
async def repo_add(k: Kernel, request: schema.RepoAddRequest) -> Outcome:
    root = request.root.encode()
    source = await asyncio.to_thread(add_kept, k.config, request.name, request.url, root)
    offers, failed = await k.repos.offers(k.config, source.name)
    if source.name in failed:  # wrong URL or root: keep nothing
        await asyncio.to_thread(remove_kept, k.config, source.name)
        raise RequestError(f"{failed[source.name]}; not added")
    count = sum(1 for offer in offers if offer.repo == source.name)
    k.repos.changed.set()  # the update check may have a repository now
    return schema.RepoRow(source.name, source.url, True, offers=count), EXIT_OK


@command(schema.RepoRmRequest)
async def repo_rm(k: Kernel, request: schema.RepoRmRequest) -> Outcome:
    found, _ = await asyncio.to_thread(sources, k.config)
    url = next((s.url for s in found if s.name == request.name), "")
    await asyncio.to_thread(remove_kept, k.config, request.name)
    return schema.RepoRow(request.name, url, True, message="removed"), EXIT_OK


@command(schema.InstallRequest)
async def install(k: Kernel, request: schema.InstallRequest) -> Outcome:
    offer, placed, state = await k.repos.install(k, request.name, request.version, request.repo)
    code = EXIT_OK if state in ("RUNNING", "available") else EXIT_FAILURE
    return schema.Installed(offer.name, offer.version, offer.repo, str(placed), state), code


@command(schema.ReloadRequest)
async def reload(k: Kernel, request: schema.ReloadRequest) -> Outcome:
    changes, fixed = await k.reload_config()
    return schema.Reloaded(changed_drivers=changes, restart_needed=fixed), EXIT_OK


@command(schema.TokenNewRequest)
async def token_new(k: Kernel, request: schema.TokenNewRequest) -> Outcome:
    from drivebay.kernel.control.authz import Role

    token, digest = await k.tokens.add(Role[request.role], request.drivers)
    return schema.TokenMade(token, digest, request.role, list(request.drivers)), EXIT_OK


def token_row(rule: TokenRule, source: Literal["kept", "config"]) -> schema.TokenRow:
    digest = rule.sha256.lower()
    return schema.TokenRow(digest[:12], digest, rule.role, list(rule.drivers), source)


@command(schema.TokenLsRequest)
async def token_ls(k: Kernel, request: schema.TokenLsRequest) -> Outcome:
    rows = [token_row(rule, "config") for rule in k.config.authorization.tokens]
    rows += [token_row(rule, "kept") for rule in k.tokens.rules]
    return rows, EXIT_OK


@command(schema.TokenRmRequest)
async def token_rm(k: Kernel, request: schema.TokenRmRequest) -> Outcome:
    """Applied at once: the next request with the token (or an admin page
    session opened with it) is refused."""
    return token_row(await k.tokens.remove(k.config, request.id), "kept"), EXIT_OK


@command(schema.ShutdownRequest)
async def shutdown(k: Kernel, request: schema.ShutdownRequest) -> Outcome:
    k.shutdown()
    return schema.ShuttingDown(), EXIT_OK


def _budget(k: Kernel) -> float:
    return k.config.timeouts.settle_budget()


# -- resources -------------------------------------------------------------------------


def _book(k: Kernel) -> ResourceBook:
    if k.book is None:
        raise RequestError("the daemon is still starting; retry in a moment")
    return k.book


@command(schema.ResourcesRequest)
async def resources(k: Kernel, request: schema.ResourcesRequest) -> Outcome:
    book = _book(k)
    await book.refreshed()
    if not request.paged:
        return book.rows(), EXIT_OK
    rows, after, total = book.page(request.limit, request.after)
    return {"resources": rows, "next": after, "total": total}, EXIT_OK  # a ResourcePage


@command(schema.ResourceAddRequest)
async def resource_add(k: Kernel, request: schema.ResourceAddRequest) -> Outcome:
    book = _book(k)
    resource = await book.add(request.id, request.driver, request.version, request.assignments)
    k.kick()
    return schema.ResourceAdded(
        resource.id, resource.driver, resource.pinned, resource.properties
    ), EXIT_OK


@command(schema.ResourceSetRequest)
async def resource_set(k: Kernel, request: schema.ResourceSetRequest) -> Outcome:
    resource = await _book(k).set(request.id, request.assignments)
    return schema.PropertiesSet(resource.id, resource.properties), EXIT_OK


@command(schema.ResourceRmRequest)
async def resource_rm(k: Kernel, request: schema.ResourceRmRequest) -> Outcome:
    await _book(k).remove(request.id)
    return schema.ResourceRemoved(request.id), EXIT_OK


@command(schema.ResourcePinRequest)
async def resource_pin(k: Kernel, request: schema.ResourcePinRequest) -> Outcome:
    await k.ensure_version(await _book(k).driver_named(request.id), request.version)
    resource = await _book(k).pin(request.id, request.version)
    k.kick()
    return schema.ResourcePinned(resource.id, resource.pinned), EXIT_OK


class CallFailed(RequestError):
    """An operation's failure as the one line ``call`` prints, ``TYPE: message``;
    ``error`` is the drivebay error (``OperationFailed``, ``CallTimeout``,
    ``Busy``, ``DriverCrashed``, ...)."""

    def __init__(self, error: DrivebayError) -> None:
        if isinstance(error, OperationFailed):
            line = f"{error.type_name}: {error.message}"
        else:
            line = f"{type(error).__name__}: {error}"
        super().__init__(line)
        self.error = error


def submit_call(k: Kernel, request: schema.CallRequest) -> asyncio.Future[Any]:
    """Queue the operation; raises at once for an unknown resource (exit 4) or a
    full mailbox. The control server replies from the future's callback: a call,
    the hot path, costs no task of its own in the daemon."""
    book = _book(k)
    try:
        return book.call(request.resource, request.op, request.args, request.timeout)
    except NoSuchName:
        raise  # exit 4, as any command naming an unknown resource
    except DrivebayError as exc:
        raise CallFailed(exc) from exc


@command(schema.CallRequest)
async def call(k: Kernel, request: schema.CallRequest) -> Outcome:
    try:
        result = await submit_call(k, request)
    except (CallFailed, NoSuchName):
        raise
    except DrivebayError as exc:
        raise CallFailed(exc) from exc
    return result, EXIT_OK
