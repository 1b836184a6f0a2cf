"""What each control command does, as data in and data out.

Every handler takes the kernel and the request's arguments and returns
``(result, exit code)``, or raises a ``RequestError`` whose message is the
one line drivebayctl prints (and whose ``exit_code`` it exits with).
Formatting for humans is drivebayctl's job; ``--json`` prints ``result``.
Streaming commands (``tail -f``) are async generators of results.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kernel
from kernel.descriptors import HOLDS_PLACE, places_held
from kernel.messages_catalog import load_catalog
from kernel.states import NOT_RUNNING, State
from protocol.control_codes import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_NOT_RUNNING_STATE, EXIT_OK
from protocol.errors import DrivebayError, KernelError, OperationFailed, RequestError
from protocol.versions import PROTOCOL_MAX, PROTOCOL_MIN

if TYPE_CHECKING:
    from kernel.daemon import Kernel
    from kernel.resources import ResourceBook
    from kernel.supervisor import DriverSlot

Args = dict[str, Any]
Outcome = tuple[Any, int]
Handler = Callable[["Kernel", Args], Awaitable[Outcome]]
Stream = Callable[["Kernel", Args], AsyncIterator[Any]]

HANDLERS: dict[str, Handler] = {}
STREAMS: dict[str, Stream] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[name] = handler
        return handler

    return register


# -- reading -------------------------------------------------------------------------


def status_row(k: Kernel, slot: DriverSlot) -> dict[str, Any]:
    uptime = slot.uptime
    resources = len(k.book.bound_to(slot)) if k.book is not None else 0
    return {
        "name": slot.manifest.name,
        "version": slot.manifest.version,
        "state": str(slot.state),
        "pid": slot.pid,
        "uptime_s": None if uptime is None else round(uptime, 3),
        "restarts": slot.restarts.total,
        "resources": resources,
        "message": slot.lifecycle.reason,
        "spare_pid": slot.spare_pid,
        "next_retry_at": slot.next_retry_at,  # FATAL: when it is tried again (epoch seconds)
    }


@command("status")
async def status(k: Kernel, args: Args) -> Outcome:
    rows = [status_row(k, slot) for slot in k.all_slots()]
    for entry in k.registry.invalid():
        rows.append(
            {
                "name": entry.path.name,
                "version": None,
                "state": str(State.INVALID),
                "pid": None,
                "uptime_s": None,
                "restarts": 0,
                "resources": 0,
                "message": k.registry.verdict(entry),
                "next_retry_at": None,
            }
        )
    names = args.get("names") or []
    if names:
        rows = [row for row in rows if _matches(row, names)]
        missing = [n for n in names if not any(_matches(row, [n]) for row in rows)]
        if missing:
            k.slot(missing[0])  # raises NoSuchName with the known names
    rows.sort(key=lambda row: (row["name"], row["version"] or ""))
    code = EXIT_NOT_RUNNING_STATE if any(State(r["state"]) in NOT_RUNNING for r in rows) else 0
    return rows, code


def _matches(row: dict[str, Any], names: list[str]) -> bool:
    full = f"{row['name']}@{row['version']}" if row["version"] else row["name"]
    return row["name"] in names or full in names


@command("describe")
async def describe(k: Kernel, args: Args) -> Outcome:
    slot = k.slot(args["name"])
    manifest = slot.manifest
    catalog = load_catalog(slot.bundle.path, args.get("lang") or None)
    return {
        **status_row(k, slot),
        "resource_ids": [a.resource_id for a in k.book.bound_to(slot)] if k.book else [],
        "description": manifest.description,
        "category": manifest.category,
        "entrypoint": manifest.entrypoint,
        "requires": list(manifest.requires),
        "dependencies": list(manifest.dependencies),
        "bundle": str(slot.bundle.source),
        "bundle_digest": slot.bundle.digest,
        "stored_at": str(slot.bundle.path),
        "env_key": slot.env_key,
        "codec": slot.process.hello_codec if slot.process else "",
        "loop": slot.process.hello_loop if slot.process else "",
        "operations": list(slot.process.ready.operations)
        if slot.process and slot.process.ready
        else [],
        "limits": slot.rlimits(),
        "logs": {stream: str(path) for stream, path in slot.log_paths().items()},
        "properties": [
            {
                "key": prop.key,
                "type": prop.type,
                "required": prop.required,
                "max_length": prop.max_length,
                "label": prop.label,
                "description": prop.description,
                "label_text": catalog.text(prop.label),
                "description_text": catalog.text(prop.description),
            }
            for prop in manifest.properties
        ],
        "history": [
            {"at": t.at, "from": str(t.source), "to": str(t.target), "reason": t.reason}
            for t in slot.lifecycle.history
        ],
    }, EXIT_OK


@command("avail")
async def avail(k: Kernel, args: Args) -> Outcome:
    rows = []
    for path, entry in sorted(k.registry.entries.items()):
        bundle = entry.bundle
        if bundle is None or k.registry.verdict(entry) is not None:
            rows.append(
                {
                    "file": path.name,
                    "name": None,
                    "version": None,
                    "verdict": "INVALID",
                    "message": k.registry.verdict(entry),
                }
            )
            continue
        slot = k.slots.get(f"{bundle.manifest.name}@{bundle.manifest.version}")
        active = slot is not None and slot.bundle.digest == bundle.digest
        rows.append(
            {
                "file": path.name,
                "name": bundle.manifest.name,
                "version": bundle.manifest.version,
                "verdict": "active" if active else "available",
                "message": bundle.manifest.description,
            }
        )
    return rows, EXIT_OK


@command("pid")
async def pid(k: Kernel, args: Args) -> Outcome:
    name = args.get("name")
    if not name:
        return os.getpid(), EXIT_OK
    slot = k.slot(name)
    if slot.pid is None:
        return None, EXIT_NOT_RUNNING
    return slot.pid, EXIT_OK


@command("version")
async def version(k: Kernel, args: Args) -> Outcome:
    return {"version": kernel.__version__, "protocol": [PROTOCOL_MIN, PROTOCOL_MAX]}, EXIT_OK


@command("tail")
async def tail(k: Kernel, args: Args) -> Outcome:
    slot = k.slot(args["name"])
    path = slot.log_paths()[args.get("stream", "stdout")]
    return read_tail(path, int(args.get("lines", 20))), EXIT_OK


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


async def tail_follow(k: Kernel, args: Args) -> AsyncIterator[Any]:
    """The tail, then every new chunk the driver writes to that stream."""
    slot = k.slot(args["name"])
    wanted = args.get("stream", "stdout")
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
        yield read_tail(slot.log_paths()[wanted], int(args.get("lines", 20)))
        while chunk := await queue.get():
            yield chunk
    finally:
        unsubscribe()
        slot.output_listeners.discard(listener)


STREAMS["tail-follow"] = tail_follow


# -- acting --------------------------------------------------------------------------


def _targets(k: Kernel, args: Args) -> list[DriverSlot]:
    names = args.get("names") or []
    if not names:
        raise RequestError("name a driver, or say all")
    if "all" in names:
        return list(k.slots.values())
    return [k.slot(name) for name in names]


@command("start")
async def start(k: Kernel, args: Args) -> Outcome:
    targets = _targets(k, args)
    refused = _beyond_descriptor_limit(k, targets)

    async def one(slot: DriverSlot) -> dict[str, Any]:
        if slot.state is State.RUNNING:
            return {"name": slot.name, "ok": True, "message": "already started"}
        if slot in refused:
            return {"name": slot.name, "ok": False, "message": k.descriptors.refusal()}
        unmet = [n for n in slot.manifest.requires if not k.running(n)]
        if unmet:
            return {
                "name": slot.name,
                "ok": False,
                "message": f"requires {', '.join(unmet)}, which is not running",
            }
        try:
            k.forget_failure(slot)
        except KernelError as exc:  # the state store refused: it stays FAILED
            return {"name": slot.name, "ok": False, "message": str(exc)}
        slot.held = False
        slot.want_running(reset=True)
        await asyncio.sleep(0)
        # BACKOFF is not an answer: the slot retries until RUNNING or FATAL.
        state = await slot.wait_settled(
            _budget(k), frozenset({State.RUNNING, State.FATAL, State.FAILED, State.BLOCKED})
        )
        if state is State.RUNNING:
            return {"name": slot.name, "ok": True, "message": "started"}
        return {"name": slot.name, "ok": False, "message": f"{state}: {slot.lifecycle.reason}"}

    results = await asyncio.gather(*(one(slot) for slot in targets))
    k.kick()
    return results, EXIT_OK if all(r["ok"] for r in results) else EXIT_FAILURE


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


@command("stop")
async def stop(k: Kernel, args: Args) -> Outcome:
    async def one(slot: DriverSlot) -> dict[str, Any]:
        slot.held = True
        if slot.state in (State.STOPPED, State.INVALID):
            return {
                "name": slot.name,
                "ok": False,
                "message": "not running",
                "code": EXIT_NOT_RUNNING,
            }
        # Running, or on its way (building, starting, backing off) or stuck
        # (FATAL, FAILED, BLOCKED): in every case it ends STOPPED.
        slot.want_stopped()
        await slot.wait_settled(_budget(k), frozenset({State.STOPPED}))
        return {"name": slot.name, "ok": True, "message": "stopped"}

    # Dependents first, each wave concurrently, as at shutdown.
    results = await k.stop_in_waves(_targets(k, args), one)
    codes = [r.get("code", EXIT_OK if r["ok"] else EXIT_FAILURE) for r in results]
    return results, max(codes, default=EXIT_OK)


@command("restart")
async def restart(k: Kernel, args: Args) -> Outcome:
    stopped, _ = await stop(k, args)
    started, code = await start(k, args)
    return [*stopped, *started], code


@command("reload")
async def reload(k: Kernel, args: Args) -> Outcome:
    changes, fixed = await k.reload_config()
    return {"reloaded": True, "changed_drivers": changes, "restart_needed": fixed}, EXIT_OK


@command("shutdown")
async def shutdown(k: Kernel, args: Args) -> Outcome:
    k.shutdown()
    return {"shutting_down": True}, EXIT_OK


def _budget(k: Kernel) -> float:
    return k.config.timeouts.settle_budget()


# -- resources -------------------------------------------------------------------------


def _book(k: Kernel) -> ResourceBook:
    if k.book is None:
        raise RequestError("the daemon is still starting; retry in a moment")
    return k.book


@command("resources")
async def resources(k: Kernel, args: Args) -> Outcome:
    return _book(k).rows(), EXIT_OK


@command("resource-add")
async def resource_add(k: Kernel, args: Args) -> Outcome:
    resource = await _book(k).add(
        args["id"], args["driver"], args.get("version"), args.get("assignments", [])
    )
    k.kick()
    return {
        "id": resource.id,
        "driver": resource.driver,
        "pinned": resource.pinned,
        "properties": resource.properties,
    }, EXIT_OK


@command("resource-set")
async def resource_set(k: Kernel, args: Args) -> Outcome:
    resource = await _book(k).set(args["id"], args.get("assignments", []))
    return {"id": resource.id, "properties": resource.properties}, EXIT_OK


@command("resource-rm")
async def resource_rm(k: Kernel, args: Args) -> Outcome:
    await _book(k).remove(args["id"])
    return {"id": args["id"], "removed": True}, EXIT_OK


@command("resource-pin")
async def resource_pin(k: Kernel, args: Args) -> Outcome:
    version = args.get("version")
    await k.ensure_version(_book(k).actor(args["id"]).driver, version)
    resource = await _book(k).pin(args["id"], version)
    k.kick()
    return {"id": resource.id, "pinned": resource.pinned}, EXIT_OK


def call_error(exc: BaseException) -> RequestError:
    """An operation's failure as the one line ``call`` prints: ``TYPE: message``."""
    if isinstance(exc, OperationFailed):
        return RequestError(f"{exc.type_name}: {exc.message}")
    if isinstance(exc, DrivebayError):  # Busy, DriverCrashed, DriverFatal, NotRunning, ...
        return RequestError(f"{type(exc).__name__}: {exc}")
    raise exc


def submit_call(k: Kernel, args: Args) -> asyncio.Future[Any]:
    """Queue the operation; raises at once for an unknown resource (exit 4) or a
    full mailbox. The control server replies from the future's callback: a call,
    the hot path, costs no task of its own in the daemon."""
    op, op_args, timeout = args["op"], args.get("args", {}), args.get("timeout")
    if type(op) is not str:
        raise TypeError(f"op must be a string, got {op!r}")
    if type(op_args) is not dict:
        raise TypeError(f"args must be a map of argument names to values, got {op_args!r}")
    if timeout is not None and (
        type(timeout) not in (int, float) or not 0 < timeout < float("inf")
    ):
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
    actor = _book(k).actor(args["resource"])
    try:
        return actor.submit(op, op_args, timeout)
    except DrivebayError as exc:
        raise call_error(exc) from exc


@command("call")
async def call(k: Kernel, args: Args) -> Outcome:
    try:
        result = await submit_call(k, args)
    except DrivebayError as exc:
        raise call_error(exc) from exc
    return result, EXIT_OK
