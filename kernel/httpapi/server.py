"""The HTTP API on the daemon's own loop: aiohttp's ``web`` server.

aiohttp runs on an existing asyncio loop (uvloop here), serves Unix sockets
as well as TCP and TLS, streams responses, and is kept by a large team: the
daemon needs no thread, no second loop and no framework beyond it. The API
listens on ``http.socket`` (default ``<state>/http.sock``), made with the
control socket's mode and group, and on ``http.listen`` when set (TLS unless
loopback; ``kernel/config.py`` refuses the rest); its connections count
against the kernel's one cap on client connections (``gate.py``). Each
request is turned into its command's request Struct by the route table
(``routes.py``), checked by ``access.authorize`` (the policy of
``kernel/control/authz.py``) and run by the control socket's own handler; a
failure is a ``problems.Problem``. As on the control socket, a client that
goes away ends its stream and its queued call, while a change it asked for
runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import logging
import os
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec
from aiohttp import web

from drivebay.kernel.control import schema
from drivebay.kernel.control.authz import socket_mode
from drivebay.kernel.control.handlers import HANDLERS, STREAMS, CallFailed, Outcome, submit_call
from drivebay.kernel.control.limits import stalled
from drivebay.kernel.control.scope import chunk_shown, screened, seer, shown
from drivebay.kernel.control.server import _clear_stale_socket
from drivebay.kernel.events import AUDITED, audit_what
from drivebay.kernel.httpapi import events, openapi
from drivebay.kernel.httpapi.access import (
    Peer,
    Peers,
    PermissionDenied,
    Unauthenticated,
    authorize,
    live_session,
    peer_of,
    still_known,
)
from drivebay.kernel.httpapi.gate import GatedSite, Refusals
from drivebay.kernel.httpapi.page import admin_page
from drivebay.kernel.httpapi.problems import ROUTING, STATUS, Problem, plain, problem
from drivebay.kernel.httpapi.routes import EVENTS, ROUTES, Route, command_of
from drivebay.kernel.httpapi.sessions import (
    COOKIE,
    SESSION_ROUTES,
    SESSIONS,
    CsrfRefused,
    LoggedOut,
    Session,
    Sessions,
    answer_of,
    principal_of,
)
from drivebay.protocol.control_codes import EXIT_OK
from drivebay.protocol.errors import (
    DrivebayError,
    KernelError,
    NoSuchName,
    NotRunning,
    RequestError,
)

if TYPE_CHECKING:
    from drivebay.kernel.config import TlsSettings
    from drivebay.kernel.kernel import Kernel

log = logging.getLogger("drivebay.http")

JSON = "application/json"
PROBLEM = "application/problem+json"
CLOSE_S = 5.0  # for requests still running when the daemon stops
SHUTDOWN_S = 1.0  # aiohttp's grace for open connections (a follow stream) at the stop


class Stalled(RequestError):
    """A request's body did not arrive whole within ``timeouts.request_s``."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Api:
    """The application: one handler per route, all dispatching alike."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        self._changes: set[asyncio.Task[Outcome]] = set()  # run to their end (see _change)
        self._openapi: bytes | None = None
        self._peers = Peers()  # who is at the other end of each Unix connection

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.kernel.config.max_frame_bytes)
        app[SESSIONS] = Sessions()
        app.router.add_get("/", admin_page)
        sessions = {"login": self._login, "session": self._session, "logout": self._logout}
        for session_route in SESSION_ROUTES:
            handler = sessions[session_route.name]
            app.router.add_route(session_route.method, session_route.path, handler)
        for route in sorted(ROUTES, key=lambda route: route.kind is not schema.CallRequest):
            # calls first: aiohttp tries the routes under a path's static
            # prefix (/v1/resources) in the order they were added
            app.router.add_route(route.method, route.path, self._handler(route))
        app.router.add_get("/v1/openapi.json", self._document)
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{path:.*}", self._unrouted)  # tried last: see _unrouted
        return app

    def _handler(self, route: Route) -> Handler:
        return functools.partial(self.serve, route)

    async def serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        typed: schema.ControlRequest | None = None
        peer: Peer | None = None
        try:
            typed = route.request(request.match_info, _query(request), await self._body(request))
            peer = await peer_of(self.kernel, request, self._peers)
            authorize(self.kernel, peer, typed)
            kind = type(typed)
            if self.kernel.stopping and kind in schema.CHANGING:
                raise NotRunning("drivebayd is stopping; retry once it has started again")
            if kind in STREAMS:
                return await self._stream(request, typed, peer)
            if isinstance(typed, schema.CallRequest):
                result, code = await self._call(typed), EXIT_OK
            elif kind in schema.CHANGING:
                result, code = await self._change(typed)
            else:
                result, code = await HANDLERS[kind](self.kernel, typed)
                result, code = shown(peer, typed, result, code)
            result = route.picked(result, request.match_info)
        except web.HTTPException as exc:  # aiohttp's own: a body over client_max_size
            return self._refused(request, exc)
        except Exception as exc:
            command = route.command if typed is None else command_of(type(typed))
            found = problem(command, exc if peer is None else screened(peer, exc))
            if typed is not None and peer is not None and not isinstance(exc, PermissionDenied):
                self._audit(peer.who, typed, f"failed: {found.detail}")
            elif typed is not None and isinstance(exc, CsrfRefused):
                self._audit(exc.who, typed, f"refused: {found.detail}")
            elif typed is not None and isinstance(exc, Unauthenticated):
                self._audit(f"tcp {request.remote}", typed, f"refused: {found.detail}")
            return self._problem(found)
        self._audit(peer.who, typed, "ok" if code == 0 else f"exit {code}")
        return web.Response(
            body=self._encoder.encode(result),
            content_type=JSON,
            headers={openapi.CODE_HEADER: str(code)},
        )

    def _audit(self, who: str, request: schema.ControlRequest, outcome: str) -> None:
        """A changing request's audit line and event, as the control socket writes it."""
        if type(request) in AUDITED:
            self.kernel.events.audit(who, audit_what(request), outcome)

    async def _body(self, request: web.Request) -> object:
        if not request.body_exists:
            return None
        request_s = self.kernel.config.timeouts.request_s
        try:
            async with asyncio.timeout(request_s):
                data = await request.read()
        except TimeoutError:
            raise Stalled(stalled(request_s)) from None
        if not data.strip():
            return None
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise schema.BadRequest(f"the body is not JSON: {exc}") from None

    async def _call(self, request: schema.CallRequest) -> Any:
        """As the control socket calls: queued on the actor at once (an unknown
        resource or a full mailbox fails here), awaited by this request (a
        client that goes away cancels it: the actor skips it)."""
        future = submit_call(self.kernel, request)
        try:
            return await future
        except NoSuchName:
            raise  # 404, also when a cluster finds it out late
        except DrivebayError as exc:
            raise CallFailed(exc) from exc

    async def _change(self, request: schema.ControlRequest) -> Outcome:
        """Run a changing command in a task of its own: a client that goes away
        does not cut it short (memory, drivers and the state store stay in
        step); its answer is dropped."""
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._changes.add(task)
        task.add_done_callback(self._changed)
        return await asyncio.shield(task)

    async def _run(self, request: schema.ControlRequest) -> Outcome:
        return await HANDLERS[type(request)](self.kernel, request)

    def _changed(self, task: asyncio.Task[Outcome]) -> None:
        self._changes.discard(task)
        if not task.cancelled():
            task.exception()  # seen by serve, or nobody is left to tell

    async def _stream(
        self, request: web.Request, typed: schema.ControlRequest, peer: Peer
    ) -> web.StreamResponse:
        """A streaming command's results (those ``peer`` may see): text as
        text/plain chunks, records as NDJSON lines; an error before the first
        one is a problem like any other. An error after it ends the stream as
        a client can tell: records with a last ``problem`` record
        (``events.problem_event``), text cut short (the connection closed
        before the chunked body's last chunk)."""
        chunks = _seen(self.kernel, peer, typed, STREAMS[type(typed)](self.kernel, typed))
        async with contextlib.aclosing(chunks):
            first = await anext(chunks)
            text = isinstance(first, str)
            kind = "text/plain; charset=utf-8" if text else events.NDJSON
            response = web.StreamResponse(headers={"Content-Type": kind})
            response.enable_chunked_encoding()
            await response.prepare(request)

            def encoded(chunk: Any) -> bytes:
                return chunk.encode() if text else self._encoder.encode(chunk) + b"\n"

            try:
                await response.write(encoded(first))
                async for chunk in chunks:
                    await response.write(encoded(chunk))
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away: its stream ends
            except Exception as exc:
                command = command_of(type(typed))
                log.error("%s: the stream ends on an error: %s", command, exc)
                with contextlib.suppress(ConnectionError):
                    if text:
                        response.force_close()
                        if request.transport is not None:
                            request.transport.close()  # cut: no last chunk
                    else:
                        await response.write(encoded(events.problem_event(command, exc)))
                        await response.write_eof()
            return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/events``: SSE or NDJSON by ``Accept`` (``events.py``), else
        the ``events`` command's list."""
        kind = events.wanted(request)
        if kind is None:
            return await self.serve(EVENTS, request)
        try:
            asked = EVENTS.request(request.match_info, _query(request), None)
            assert isinstance(asked, schema.EventsRequest)
            follow = schema.EventsFollowRequest(asked.since, asked.last)
            peer = await peer_of(self.kernel, request, self._peers)
            authorize(self.kernel, peer, follow)
            return await events.stream_events(self.kernel, request, follow, kind, peer)
        except Exception as exc:
            return self._problem(problem("events-follow", exc))

    async def _login(self, request: web.Request) -> web.Response:
        """``POST /v1/login`` with a bearer token: a session cookie for the
        admin page, and the page's role and CSRF token."""
        try:
            if "Authorization" not in request.headers:
                raise Unauthenticated("log in with Authorization: Bearer TOKEN")
            peer = await peer_of(self.kernel, request, self._peers)
        except Exception as exc:
            found = problem("login", exc)
            self.kernel.events.audit(f"tcp {request.remote}", "login", f"refused: {found.detail}")
            return self._problem(found)
        sid, session = request.app[SESSIONS].open(peer)
        self.kernel.events.audit(peer.who, "login", "ok")
        response = self._session_answer(session)
        response.set_cookie(
            COOKIE,
            sid,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def _session(self, request: web.Request) -> web.Response:
        """``GET /v1/session``: the logged-in page's role and CSRF token."""
        try:
            session = live_session(self.kernel, request)
            if session is None:
                raise Unauthenticated("no session: log in")
        except Unauthenticated as exc:
            return self._problem(problem("session", exc))
        return self._session_answer(session)

    async def _logout(self, request: web.Request) -> web.Response:
        session = request.app[SESSIONS].find(request)
        if session is None:
            return self._problem(problem("logout", Unauthenticated("no session: log in")))
        try:
            principal_of(session, request)  # the CSRF token
        except CsrfRefused as exc:
            found = problem("logout", exc)
            self.kernel.events.audit(exc.who, "logout", f"refused: {found.detail}")
            return self._problem(found)
        request.app[SESSIONS].close(request)
        self.kernel.events.audit(session.principal.who, "logout", "ok")
        response = web.Response(body=self._encoder.encode(LoggedOut()), content_type=JSON)
        response.del_cookie(COOKIE, path="/")
        return response

    def _session_answer(self, session: Session) -> web.Response:
        return web.Response(
            body=self._encoder.encode(answer_of(session)),
            content_type=JSON,
            headers={"Cache-Control": "no-store"},
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus' exposition, to whoever may read ``status``."""
        from drivebay.kernel.metrics.exposition import render_metrics

        try:
            peer = await peer_of(self.kernel, request, self._peers)
            authorize(self.kernel, peer, schema.StatusRequest([]))
        except Exception as exc:
            return self._problem(problem("metrics", exc))
        accept = request.headers.get("Accept")
        body, content_type = await render_metrics(self.kernel, accept, seer(peer))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _document(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = self._encoder.encode(openapi.document())
        return web.Response(body=self._openapi, content_type=JSON)

    def _problem(self, found: Problem) -> web.Response:
        return web.Response(
            body=self._encoder.encode(found), status=found.status, content_type=PROBLEM
        )

    async def _unrouted(self, request: web.Request) -> web.StreamResponse:
        """A path no route matched with this method (the catch-all route, added
        last): 405 when another method has a route there, else 404. A route
        rather than a middleware, which every request would pass through."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not request.match_info.route.resource:
                _, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            return self._refused(request, web.HTTPMethodNotAllowed(request.method, allowed))
        return self._refused(request, web.HTTPNotFound())

    def _refused(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        """aiohttp's own refusals (no such path, wrong method, body too large)
        as problems too."""
        if exc.status < 400:
            raise exc
        name = next((n for n in ROUTING if STATUS[n] == exc.status), "RequestError")
        detail = f"{request.method} {request.path}: {exc.reason}"
        if exc.status == 404:
            detail += "; GET /v1/openapi.json lists the routes"
        return self._problem(plain(name, exc.status, detail))

    async def close(self) -> None:
        """Cancel the changes still running (the daemon is stopping) and wait for them."""
        for task in self._changes:
            task.cancel()
        if self._changes:
            async with asyncio.timeout(CLOSE_S):
                await asyncio.gather(*self._changes, return_exceptions=True)


async def _seen(
    kernel: Kernel, peer: Peer, typed: schema.ControlRequest, chunks: AsyncIterator[Any]
) -> AsyncGenerator[Any, None]:
    """The chunks of a stream that ``peer`` may see (``scope.chunk_shown``),
    until its token is removed (the stream ends at its next chunk)."""
    async with contextlib.aclosing(cast(AsyncGenerator[Any, None], chunks)) as source:
        async for chunk in source:
            if not still_known(kernel, peer):
                return
            if chunk_shown(peer, typed, chunk):
                yield chunk


def _query(request: web.Request) -> dict[str, list[str]]:
    if not request.query_string:
        return {}
    query = request.query
    return {key: query.getall(key) for key in query}


@contextlib.asynccontextmanager
async def serve_http(kernel: Kernel) -> AsyncIterator[None]:
    """Serve the HTTP API for as long as the context lasts."""
    api = Api(kernel)
    runner = web.AppRunner(
        api.app(), handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_S
    )
    await runner.setup()
    path = kernel.config.http_socket_path
    refusals = Refusals()  # connections count against the kernel's one cap (gate.py)
    try:
        sock = _unix_socket(kernel, path)
        await GatedSite(runner, kernel.connections, refusals, sock=sock).start()
        log.info("http api: %s", path)
        address = kernel.config.http.address()
        if address is not None:
            await _listen_tcp(runner, kernel, refusals, address, kernel.config.http.tls)
        yield
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S + SHUTDOWN_S):
                await runner.cleanup()
        with contextlib.suppress(TimeoutError):
            await api.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _unix_socket(kernel: Kernel, path: Path) -> socket.socket:
    """The listening socket at ``path``, born with the control socket's mode
    (``authz.socket_mode``) and group."""
    _clear_stale_socket(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    group = kernel.config.socket_group
    mode = socket_mode(kernel.config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise KernelError(
            f"cannot listen on {path}: {exc.strerror or exc}; set http.socket to another path"
        ) from exc
    finally:
        os.umask(old_umask)
    if group:
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _listen_tcp(
    runner: web.AppRunner,
    kernel: Kernel,
    refusals: Refusals,
    address: tuple[str, int],
    tls: TlsSettings | None,
) -> None:
    host, port = address
    context = None if tls is None else await asyncio.to_thread(_tls_context, tls)
    try:
        site = GatedSite(
            runner, kernel.connections, refusals, context, host=host, port=port, reuse_address=True
        )
        await site.start()
    except OSError as exc:
        raise KernelError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; change http.listen"
        ) from exc
    log.info("http api: %s://%s:%d", "https" if context else "http", host, port)


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server's TLS: its certificate, and with ``client_ca`` the clients'."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            context.load_verify_locations(tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise KernelError(f"http.tls: cannot use {tls.cert} / {tls.key}: {exc}") from exc
    return context


__all__ = ["Api", "serve_http"]
