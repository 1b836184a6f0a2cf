"""Connecting a node to the cluster's PostgreSQL database.

Every connection is in autocommit mode: each guarded write is one statement,
checked and committed by the server without a round trip in between, so no
pause of the node can fall between its check and its commit. Its timeouts
are shorter than ``renew_s``: a dead or black-holed link fails a renewal in
time for the node to fence itself rather than hang past its lease.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_dumps, set_json_loads

from drivebay.kernel.cluster.settings import ClusterSettings, shown_database
from drivebay.protocol.errors import KernelError

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
NOTIFY_PREFIX: Final = "drivebay.node."
# Results of the calls a node accepted (payload: the operation id). As short
# as NOTIFY_PREFIX: a channel name (with a 48-character node id) fits in 63 bytes.
RESULT_PREFIX: Final = "drivebay.done."


def channel(node_id: str) -> str:
    """The notification channel of node ``node_id`` (LISTEN on it, pg_notify to it)."""
    return NOTIFY_PREFIX + node_id


# The payload of a result notification: "<operation id> <state> <result as
# JSON>", or only "<operation id>" when the result would not fit in a
# notification (8000 bytes): then the node reads it.
RESULT_PAYLOAD: Final = (
    "CASE WHEN octet_length({op}.result::text) < 7000"
    " THEN {op}.id::text || ' ' || {op}.state || ' ' || {op}.result::text"
    " ELSE {op}.id::text END"
)


# A resource was added (payload: its id): every node claims at once rather
# than at its next round. As short as NOTIFY_PREFIX.
CLAIM_CHANNEL: Final = "drivebay.claim"


def result_channel(node_id: str) -> str:
    """The channel on which node ``node_id`` hears that a call it accepted has its result."""
    return RESULT_PREFIX + node_id


def session_options(settings: ClusterSettings) -> dict[str, str | int]:
    """libpq parameters bounding every wait on the database by ``renew_s``."""
    limit_ms = max(1, int(settings.renew_s * 1000))
    server = (
        f"-c statement_timeout={limit_ms} -c lock_timeout={limit_ms} "
        f"-c idle_in_transaction_session_timeout={limit_ms}"
    )
    return {
        "application_name": f"drivebayd {settings.node_id}",
        "connect_timeout": max(2, math.ceil(settings.renew_s)),  # libpq's least is 2 s
        "options": server,
        # A link that stops answering without closing: TCP gives up this soon.
        "tcp_user_timeout": limit_ms,
        "keepalives": 1,
        "keepalives_idle": max(1, int(settings.renew_s)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
    }


async def connect(settings: ClusterSettings) -> Connection:
    """A new autocommit connection to ``settings.database``.

    Raises ``KernelError`` with one line when the database cannot be reached
    or refuses us (the URL's password is never shown). Cancelled while it
    connects (a node that stops, a caller's timeout), it closes what it
    opened before it re-raises (within ``renew_s`` more), rather than leave
    a half-open connection's socket to the garbage collector."""
    opening = asyncio.ensure_future(_connect(settings))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({opening}, timeout=settings.renew_s)
        if not done:
            opening.cancel()
            await asyncio.wait({opening})
        elif not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        raise


async def _connect(settings: ClusterSettings) -> Connection:
    try:  # parsing the URL is in here too: a malformed one is psycopg's ProgrammingError
        conninfo = make_conninfo(settings.database, **session_options(settings))
        db = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise KernelError(
            f"cannot connect to the cluster database {shown_database(settings.database)} "
            f"({reason}); check cluster.database and that PostgreSQL runs and admits this node"
        ) from exc
    # JSON (arguments, results, properties) through msgspec: faster than the
    # json module, and it takes every value a msgpack frame can carry but an
    # extension type and NaN (bytes become base64 text; ``stored_json``
    # refuses the rest).
    set_json_dumps(msgspec.json.encode, db)
    set_json_loads(loaded_json, db)
    return db


def stored_json(value: Any) -> msgspec.Raw:
    """``value`` encoded as the JSON the cluster stores (wrap it in ``Jsonb``):
    bytes become base64 text, a date or time RFC 3339 text, a number key
    text. Raises ``TypeError`` for what JSON cannot hold (a msgpack extension
    type, NaN or infinity, which msgspec would write as null); the caller
    says whose value it was."""
    encoded = msgspec.json.encode(value)
    if b"null" in encoded and _not_finite(value):
        raise TypeError("NaN and infinity have no JSON form")
    return msgspec.Raw(encoded)


# PostgreSQL prints a jsonb number without its float form: 1e20 comes back as
# 100000000000000000000. No integer past msgpack's 64 bits can have been
# stored (none crosses a msgpack frame), so such a number is a float again;
# left an integer, it could be sent to no driver and to no client.
_LONG_NUMBER: Final = re.compile(rb"\d{20}")
_SMALLEST: Final = -(2**63)
_LARGEST: Final = 2**64 - 1


def loaded_json(data: str | bytes | msgspec.Raw) -> Any:
    """What ``stored_json`` stored, as PostgreSQL gives it back: JSON whose
    integers past 64 bits are floats again."""
    raw = (
        data if isinstance(data, bytes) else data.encode() if isinstance(data, str) else bytes(data)
    )
    value = msgspec.json.decode(raw)
    return _floats_again(value) if _LONG_NUMBER.search(raw) else value


def _floats_again(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _floats_again(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats_again(item) for item in value]
    if type(value) is int and not _SMALLEST <= value <= _LARGEST:
        return float(value)
    return value


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_not_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_not_finite(item) for item in value)
    return False


async def bounded(seconds: float, statements: Awaitable[T]) -> T:
    """Await ``statements`` (on a connection of the caller's) for at most
    ``seconds``; past that raise ``TimeoutError`` within ``seconds`` more.

    ``asyncio.timeout`` alone is not enough on a link that stops answering
    without closing (a black hole): psycopg, cancelled in the middle of a
    statement, sends the server a cancel request and waits for it and then
    for the statement's end, up to 5 s each (11 s measured), on the same
    dead link. Cancelled a second time, it closes the connection at once.
    So the statement is cancelled at ``seconds`` (a slow but live server
    answers the cancel request at once and the connection stays usable),
    and cancelled again if it has not ended ``seconds`` later. The caller
    then finds the connection closed (``broken``) and opens another."""
    task = asyncio.ensure_future(statements)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        await _end(task, seconds)
        raise
    if done:
        return task.result()
    await _end(task, seconds)
    raise TimeoutError(f"the cluster database did not answer within {seconds:g} s")


async def _end(task: asyncio.Future[Any], seconds: float) -> None:
    task.cancel()  # psycopg asks the server to cancel the statement
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()  # interrupted again: psycopg closes the connection at once
        done, _ = await asyncio.wait({task}, timeout=seconds)
    if done and not task.cancelled():
        task.exception()  # retrieved: the caller raises TimeoutError instead
