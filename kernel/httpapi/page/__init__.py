"""The admin page (``GET /``): one HTML file with its script and style inline,
shipped in the package; no build step and nothing loaded from elsewhere. It
talks to the API it is served by (``/v1``) with the session ``POST /v1/login``
opens (``../sessions.py``). A browser with a live session gets the page with
its role and CSRF token in it (the ``drivebay-session`` meta element), so a
page loaded again needs no request to learn them."""

from __future__ import annotations

import asyncio
import html
from importlib import resources
from typing import get_args

import msgspec
from aiohttp import web

from drivebay.kernel.control.schema import EventType
from drivebay.kernel.httpapi.sessions import SESSIONS, answer_of

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SLOT = b'<meta name="drivebay-session" content="">'
TYPES_SLOT = b"/*EVENT_TYPES*/[]"
_page: bytes | None = None


def _read() -> bytes:
    """The page, its list of event types (one listener each) from the schema."""
    page = resources.files(__package__).joinpath("index.html").read_bytes()
    assert TYPES_SLOT in page
    return page.replace(TYPES_SLOT, msgspec.json.encode(list(get_args(EventType))), 1)


async def admin_page(request: web.Request) -> web.Response:
    global _page
    if _page is None:
        _page = await asyncio.to_thread(_read)
    body = _page
    session = request.app[SESSIONS].find(request)
    if session is not None:
        known = msgspec.json.encode(answer_of(session)).decode()
        filled = html.escape(known, quote=True).encode()
        body = body.replace(SLOT, SLOT.replace(b'content=""', b'content="' + filled + b'"'), 1)
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
